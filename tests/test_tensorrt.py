"""The TensorRT backend's runtime (engine/decode/trt_runtime.py, over trt_engines.py and
trt_memory.py; their pure parts: tests/test_tensorrt_engines.py).

- the runtime's bookkeeping, everywhere torch is: a stand-in `tensorrt` module whose
  "engine" runs the same graph on ONNX Runtime, reading and writing host buffers at the
  addresses the runtime binds (torch CPU tensors in place of CUDA ones). It checks the
  ping-pong cache, the shapes and profile, fork, slide, the engine cache and its repair --
  not TensorRT itself;
- the real thing, only where TensorRT and an NVIDIA GPU are (skipped elsewhere): fp16
  parity with the torch reference, engines cached and reused, a corrupt engine rebuilt.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("onnx")

from musebridge.engine.decode import backends, trt_engines, trt_memory, trt_runtime  # noqa: E402
from musebridge.engine.decode.backends import BackendError, available_backends, open_runtime, resolve_backend  # noqa: E402
from musebridge.engine.decode.trt_engines import MAX_BATCH, engine_root  # noqa: E402
from musebridge.engine.decode.trt_memory import tensorrt_available  # noqa: E402
from musebridge.onnx_export import graph_paths  # noqa: E402

from conftest import one_line as _one_line  # noqa: E402

ON_GPU = tensorrt_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="needs TensorRT and an NVIDIA GPU")


@pytest.fixture(scope="module", autouse=True)
def _own_cache(cache_dir):
    """Built graphs and engines go to a temporary cache (conftest's `cache_dir`)."""
    return cache_dir


# --- a stand-in TensorRT: ONNX Runtime behind TensorRT's calls, on host memory -----------------------------
MAGIC = b"FAKETRT1"


def _at(address: int, shape: tuple, dtype) -> np.ndarray:
    """The numpy view of `shape` x `dtype` at a raw address (host memory: torch CPU tensors)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buf = (ctypes.c_byte * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype, count).reshape(shape)


class _Engine:
    def __init__(self, fake, header: dict, model: bytes):
        import onnx
        import onnxruntime as ort

        self.fake, self.header = fake, header
        graph = onnx.load_from_string(model).graph
        self.dims = {v.name: trt_engines._dims(v) for v in list(graph.input) + list(graph.output)}
        self.names = [v.name for v in graph.input] + [v.name for v in graph.output]
        self.inputs = {v.name for v in graph.input}
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        types_ = {i.name: i.type for i in self.session.get_inputs() + self.session.get_outputs()}
        self.dtypes = {n: {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(float16)": "float16"}[t]
                       for n, t in types_.items()}

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name in self.inputs else "out"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) and d > 0 else -1 for d in self.dims[name])

    def is_shape_inference_io(self, name):
        return False

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.header["profile"][name]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def _shape(self, name):
        shape = self.engine.get_tensor_shape(name)
        return self.shapes[name] if -1 in shape else shape

    def execute_async_v3(self, stream):
        e = self.engine
        assert set(self.addresses) == set(e.names), "every tensor needs an address"
        assert self.addresses["cache"] != self.addresses["cache_out"], "the cache must not alias its output"
        feeds = {n: _at(self.addresses[n], self._shape(n), e.dtypes[n]).copy() for n in e.inputs}
        logits, cache_out = e.session.run(["logits", "cache_out"], feeds)
        assert cache_out.shape == feeds["cache"].shape
        _at(self.addresses["logits"], logits.shape, np.float32)[...] = logits
        _at(self.addresses["cache_out"], cache_out.shape, e.dtypes["cache_out"])[...] = cache_out
        e.fake.runs += 1
        return True


def _fake_tensorrt() -> types.ModuleType:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.99-fake"
    fake.builds, fake.runs, fake.parse_errors, fake.networks = 0, 0, [], []

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if not data.startswith(MAGIC):
                self.logger.log(ILogger.Severity.ERROR, "fake: not an engine\nsecond line")
                return None
            size = int.from_bytes(data[8:16], "little")
            return _Engine(fake, json.loads(data[16 : 16 + size]), data[16 + size :])

    class Network:
        def __init__(self, flags):
            self.flags, self.model = flags, None
            fake.networks.append(self)

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            if fake.parse_errors:
                self.num_errors = len(fake.parse_errors)
                return False
            self.network.model = open(path, "rb").read()
            return True

        def get_error(self, i):
            return types.SimpleNamespace(desc=lambda: fake.parse_errors[i], node_operator=lambda: "ScatterND")

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self):
            self.flags, self.profiles = set(), []

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Builder:
        def __init__(self, logger):
            pass

        create_network = staticmethod(Network)
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            fake.builds += 1
            header = json.dumps({"profile": config.profiles[0].shapes, "flags": network.flags,
                                 "fp16": "FP16" in config.flags}).encode()
            return MAGIC + len(header).to_bytes(8, "little") + header + network.model

    fake.ILogger, fake.Runtime, fake.Builder, fake.OnnxParser = ILogger, Runtime, Builder, Parser
    fake.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    fake.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    fake.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    fake.nptype = lambda t: np.dtype(t).type
    return fake


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """The stand-in TensorRT, torch CPU tensors for "device" buffers, and a cache of this test's own."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    fake = _fake_tensorrt()
    fake.cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(fake.cache_dir))
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_runtime, "tensorrt_available", lambda: True)  # what the registry asks
    monkeypatch.setattr(trt_engines, "device_memory", lambda: trt_memory.TorchMemory("cpu"))
    monkeypatch.setattr(trt_engines, "_STATE", {})
    return fake


TINY_MODEL = {"lean_to_notes": True, "half": True}  # conftest's `tiny`, with fp16 weights as models ship

def _tokens(vocab, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [vocab.wait(1)] + [int(t) for t in rng.integers(0, len(vocab), n - 1)]


def _drive(ref, rt, toks) -> float:
    """Prefill, appends of many sizes, steps, and steps through a slide; the worst |Δlogits|."""
    worst = np.abs(ref.prefill(toks[:100]) - rt.prefill(toks[:100])).max()
    at = 100
    for n in (1, 7, 40, 3, 150, 16, 17, 90):
        worst = max(worst, np.abs(ref.append(toks[at : at + n]) - rt.append(toks[at : at + n])).max())
        at += n
    for t in toks[at : at + 90]:  # the context (512) fills at 512: both slide and re-prefill
        worst = max(worst, np.abs(ref.step(t) - rt.step(t)).max())
    assert rt.position == ref.position and rt.slides == ref.slides == 1
    return float(worst)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_runtime_bookkeeping_matches_onnxruntime(fake_trt, tiny, dtype):
    ref, rt = open_runtime(tiny, "onnxruntime", dtype=dtype), open_runtime(tiny, "tensorrt", dtype=dtype)
    assert rt.name == "tensorrt" and fake_trt.builds == 2
    worst = _drive(ref, rt, _tokens(rt.vocab, 700))
    assert worst <= 1e-5, worst  # the same graph on the same ORT: only the cache handling differs
    strongly = [n.flags == 1 << 5 for n in fake_trt.networks]
    assert all(strongly)  # fp16 graphs keep their own types; fp32 graphs with fp16=False too


def test_the_cache_ping_pongs_between_two_buffers(fake_trt, tiny):
    rt = open_runtime(tiny, "tensorrt")
    a, b = (rt.engines.mem.ptr(c) for c in rt.caches)
    logits_ptr = rt.engines.mem.ptr(rt._logits)
    assert a != b and rt.caches[0].dtype.is_floating_point and str(rt.caches[0].dtype) == "torch.float16"
    rt.prefill(_tokens(rt.vocab, 50))
    for i, t in enumerate(_tokens(rt.vocab, 20, seed=2)):
        before = rt.position
        rt.step(t) if i % 5 else rt.append([t, t])
        now = tuple(rt.engines.mem.ptr(c) for c in rt.caches)
        assert set(now) == {a, b} and rt.engines.mem.ptr(rt._logits) == logits_ptr  # nothing reallocated
        cur = rt.caches[0].numpy()
        assert np.abs(cur[:, :, 0, :, before].astype(np.float32)).sum() > 0  # the new row is in the current one
        assert not cur[:, :, 0, :, rt.position :].any()
    runs = fake_trt.runs
    assert runs == 21


def test_fork_rewind_and_reset_match_onnxruntime(fake_trt, tiny):
    outs = []
    for backend in ("onnxruntime", "tensorrt"):
        rt = open_runtime(tiny, backend, dtype="fp32")
        toks = _tokens(rt.vocab, 200, seed=4)
        first = rt.prefill(toks[:150])
        mark = rt.mark()
        a = rt.append(toks[150:160])
        assert rt.rewind(mark) and np.allclose(rt.append(toks[150:160]), a, atol=1e-6)
        many = rt.fork(3)
        assert many.batch == 3 and many.name == backend and many.position == rt.position
        outs.append([first] + [many.step([5, 9, 5]) for _ in range(3)] + [many.append([7, 8])])
        assert np.allclose(outs[-1][-1][0], outs[-1][-1][2], atol=1e-6)
        rt.reset()
        assert np.allclose(rt.prefill(toks[:150]), first, atol=1e-6)
    for x, y in zip(*outs):
        assert np.abs(x - y).max() <= 1e-5


def test_engines_are_cached_reused_and_rebuilt_when_damaged(fake_trt, tiny):
    cache_dir = fake_trt.cache_dir
    rt = open_runtime(tiny, "tensorrt")
    paths = rt.engines.paths
    assert fake_trt.builds == 2 and sorted(rt.engines.built) == ["chunk", "step"]
    assert all(p.parent == cache_dir / "tensorrt" and p.suffix == ".engine" and p.is_file() for p in paths.values())
    assert paths["step"] != paths["chunk"]
    assert not list((cache_dir / "tensorrt").glob("*.tmp"))  # written by rename, no leftovers
    want = rt.prefill([1, 2, 3])
    again = open_runtime(tiny, "tensorrt")
    assert fake_trt.builds == 2 and again.engines.built == [] and again.engines.paths == paths
    paths["chunk"].write_bytes(b"half an engine")
    mended = open_runtime(tiny, "tensorrt")
    assert fake_trt.builds == 3 and mended.engines.built == ["chunk"]
    assert paths["chunk"].read_bytes().startswith(MAGIC)
    assert np.allclose(mended.prefill([1, 2, 3]), want)


def test_a_damaged_cached_graph_is_rebuilt(fake_trt, tiny):
    graph_paths(tiny, "fp16")["chunk"].write_bytes(b"not a graph")
    rt = open_runtime(tiny, "tensorrt")
    assert rt.prefill([1, 2, 3]).shape == (1, len(rt.vocab))


def test_batches_past_the_profile_and_parser_errors_are_one_line(fake_trt, tiny):
    with pytest.raises(BackendError) as e:
        open_runtime(tiny, "tensorrt", batch=MAX_BATCH + 1)
    assert str(MAX_BATCH) in _one_line(e)
    rt = open_runtime(tiny, "tensorrt")
    rt.prefill([1, 2])
    assert rt.fork(MAX_BATCH).batch == MAX_BATCH
    with pytest.raises(BackendError):
        rt.fork(MAX_BATCH + 1)
    with pytest.raises(BackendError) as e:
        open_runtime(tiny, "tensorrt", dtype="int8")
    assert "fp16" in _one_line(e)
    with pytest.raises(BackendError) as e:
        open_runtime(tiny, "tensorrt", device="cpu")
    assert "GPU" in _one_line(e)
    fake_trt.parse_errors[:] = ["Unsupported\nop", "and more"]
    with pytest.raises(BackendError) as e:
        trt_engines.build_engine(graph_paths(tiny, "fp16")["step"], trt_engines.engine_root() / "x.engine")
    assert "ScatterND: Unsupported op" in _one_line(e)


def test_auto_never_picks_tensorrt_even_where_it_is_usable(fake_trt, tiny, monkeypatch):
    """TensorRT is opt-in until a run on a GPU is recorded (docs/PERFORMANCE.md "GPU"): usable here
    (the stand-in), listed, opened by name, yet `auto` takes onnxruntime, else torch, else says so."""
    assert available_backends() == ["onnxruntime", "torch", "tensorrt"]
    assert resolve_backend("auto") == "onnxruntime" and open_runtime(tiny).name == "onnxruntime"
    assert fake_trt.builds == 0  # not even an engine built behind auto's back
    assert open_runtime(tiny, "tensorrt").name == "tensorrt" and fake_trt.builds == 2
    monkeypatch.setattr(backends, "_importable", lambda name: name == "torch")  # no onnxruntime here
    assert available_backends() == ["torch", "tensorrt"] and resolve_backend("auto") == "torch"
    monkeypatch.setattr(backends, "_importable", lambda name: False)
    assert available_backends() == ["tensorrt"]
    with pytest.raises(BackendError) as e:
        resolve_backend("auto")
    assert "pip install onnxruntime" in _one_line(e)


# --- the real thing: TensorRT on an NVIDIA GPU -----------------------------------------------------------
@gpu
def test_gpu_tensorrt_is_listed_and_still_opt_in():
    assert "tensorrt" in available_backends() and resolve_backend("auto") != "tensorrt"


@gpu
def test_gpu_fp16_logits_match_torch_through_prefill_appends_steps_and_a_slide(tiny):
    ref, rt = open_runtime(tiny, "torch"), open_runtime(tiny, "tensorrt")
    assert rt.engines.mem.library in ("torch", "cupy")
    worst = _drive(ref, rt, _tokens(rt.vocab, 700))
    assert worst <= 1e-2, worst


@gpu
def test_gpu_fork_and_rewind(tiny):
    rt = open_runtime(tiny, "tensorrt")
    toks = _tokens(rt.vocab, 200, seed=3)
    rt.prefill(toks[:120])
    mark = rt.mark()
    a = rt.append(toks[120:130])
    assert rt.rewind(mark) and np.abs(rt.append(toks[120:130]) - a).max() <= 1e-3
    many = rt.fork(3)
    b = many.step([toks[130], toks[131], toks[130]])
    one = rt.step(toks[130])
    assert np.abs(b[0] - one[0]).max() <= 1e-2 and np.abs(b[2] - one[0]).max() <= 1e-2
    assert np.abs(b[0] - b[2]).max() <= 1e-3


@gpu
def test_gpu_engines_are_cached_reused_and_rebuilt_when_corrupt(tiny, monkeypatch):
    first = open_runtime(tiny, "tensorrt")
    paths = first.engines.paths
    assert all(p.is_file() and p.parent == engine_root() for p in paths.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    want = first.prefill([1, 2, 3])

    def no_build(*a, **k):
        raise AssertionError("rebuilt an engine that was cached")

    with monkeypatch.context() as mp:
        mp.setattr(trt_engines, "build_engine", no_build)
        again = open_runtime(tiny, "tensorrt")
    assert again.engines.built == [] and {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    paths["step"].write_bytes(b"\x00corrupt engine" * 64)
    mended = open_runtime(tiny, "tensorrt")
    assert mended.engines.built == ["step"]
    assert np.abs(mended.prefill([1, 2, 3]) - want).max() <= 1e-3
    assert np.isfinite(mended.step(4)).all()
