"""The TensorRT backend: engines built from the ONNX graphs with TensorRT's own Python API.

Not ONNX Runtime's TensorRT provider: one engine per graph, built once and kept, and a
decode step that is two small copies and one `execute_async_v3` -- nothing between us
and the kernels. (ORT's provider stays reachable as the onnxruntime backend's own
device="tensorrt".)

Engines. The step graph (n = 1) and the chunk graph (1..512 tokens: CachedRuntime never
passes more) each become one engine with one optimization profile, batch 1..16 (opt 1;
chunk tokens opt 64). They are built from the fp16 graphs as strongly typed networks:
TensorRT keeps the graph's own types -- fp16 math and cache, float32 logits -- which is
also the only mode TensorRT 11 has (it dropped BuilderFlag.FP16). An fp32 graph with
fp16=True is built weakly typed with BuilderFlag.FP16 (TensorRT 10 only). Engines only
run on the GPU and TensorRT they were built with, so they are cached under

    <musebridge cache>/tensorrt/<sha256 of graph, GPU, compute capability, TensorRT, this builder>.engine

(next to the graphs' `onnx/`; MUSEBRIDGE_CACHE_DIR moves both). A damaged engine file is
deleted and rebuilt: it is only a cache. The first open on a machine builds (a minute or so).
Engines are shared by every runtime opened from them (forks included); each runtime has its
own two execution contexts, and runs are serialised per engine pair, since all contexts
share the one optimization profile.

The cache. ORT writes the cache in place (input and output bound to one buffer).
TensorRT does not promise that aliasing an input with an output is safe, so a runtime
holds two cache buffers and swaps them after every run: the graph's ScatterND output is
the whole cache with the new rows, i.e. one full-cache copy per step -- microseconds at
GPU bandwidth. Rows past `position` are never read (masked), so nothing is cleared; both
buffers start zeroed because a masked row still gets multiplied by a zero weight, and
0 * NaN from uninitialised memory would poison the logits.

Device memory. TensorRT's Python API takes raw device pointers and allocates nothing for
us: buffers are torch CUDA tensors when torch has CUDA, else cupy arrays
(`device_memory`). tokens, feats and start travel in one int64 upload per run.

Written against TensorRT 10's Python API; this path has not run on a GPU here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musebridge.errors import BackendError, GraphFileError
from musebridge.files import write_atomic
from musebridge.onnx_export.build import cache_root, decoder_graphs, model_folder

from ..music.vocab import Vocabulary
from ..training.checkpoint import load_vocab
from .runtime import CachedRuntime

INSTALL = ("pip install tensorrt on a machine with an NVIDIA GPU, with a CUDA build of torch or cupy for "
           "GPU buffers (ONNX Runtime on the GPU instead: pip install onnxruntime-gpu)")
ENGINE_BUILDER_VERSION = 1  # bump when the build below changes: old engines then miss the cache
MAX_BATCH = 16  # rows per runtime (fork variations included)
MAX_TOKENS = 512  # tokens per chunk run: CachedRuntime never passes more
OPT_TOKENS = 64  # the chunk size TensorRT tunes for (appends are short; prompts come in 512s)
ALIGN_WORDS = 32  # 256 bytes of int64: where each of tokens/feats/start starts in the upload buffer
INPUTS = ("tokens", "feats", "start", "cache")
OUTPUTS = ("logits", "cache_out")


# --- the engine cache: pure functions -----------------------------------------------------------------
def engine_cache_key(onnx_path: str | Path, gpu_name: str, compute_capability: str, trt_version: str, *,
                     fp16: bool = True) -> str:
    """sha256 (hex) of the graph file's bytes, the GPU, its compute capability, the TensorRT
    version and how this module builds (version, profile, precision): an engine is only valid
    for exactly those, so any change is a different file rather than a stale engine."""
    spec = (f"musebridge-tensorrt {ENGINE_BUILDER_VERSION} batch<={MAX_BATCH} tokens<={MAX_TOKENS}/{OPT_TOKENS} "
            f"fp16={fp16}")
    h = hashlib.sha256("\0".join([spec, gpu_name, compute_capability, trt_version]).encode() + b"\0")
    path = Path(onnx_path)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise GraphFileError(f"{path} is unreadable ({e.strerror or e}); delete it and open the model again") from None
    return h.hexdigest()


def engine_root() -> Path:
    """<musebridge cache>/tensorrt, beside the graphs' onnx/ folder (same root, same env vars)."""
    return cache_root().parent / "tensorrt"


def engine_path(onnx_path: str | Path, gpu_name: str, compute_capability: str, trt_version: str, *,
                fp16: bool = True) -> Path:
    """Where the engine of a graph file for this GPU and TensorRT lives."""
    key = engine_cache_key(onnx_path, gpu_name, compute_capability, trt_version, fp16=fp16)
    return engine_root() / f"{key}.engine"


# --- what a graph file declares: read with onnx, no TensorRT --------------------------------------------
@dataclass(frozen=True)
class GraphIO:
    """A decoder graph's inputs and outputs: dims are ints or the names of dynamic dims."""

    path: Path
    inputs: dict[str, tuple]
    outputs: dict[str, tuple]
    cache_fp16: bool

    @property
    def cache_dims(self) -> tuple:
        return self.inputs["cache"]

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if i == 2 else int(d) for i, d in enumerate(self.cache_dims))

    @property
    def context(self) -> int:
        return int(self.cache_dims[4])

    @property
    def vocab_size(self) -> int:
        return int(self.outputs["logits"][1])

    @property
    def cache_dtype(self) -> type:
        return np.float16 if self.cache_fp16 else np.float32


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _dims(value_info) -> tuple:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim)


def read_graph_io(path: str | Path) -> GraphIO:
    """The I/O of a decoder graph file; a missing, damaged or foreign file is a one-line GraphFileError
    (the caller rebuilds the cached graphs on it, as the onnxruntime backend does)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise GraphFileError(f"{path} not found; write it with musebridge export")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError and friends
        raise GraphFileError(f"{path} is not a usable ONNX graph ({_one_line(e, 120)}); "
                             "delete it and export or open it again") from None
    inputs = {i.name: _dims(i) for i in graph.input}
    outputs = {o.name: _dims(o) for o in graph.output}
    if set(inputs) != set(INPUTS) or set(outputs) != set(OUTPUTS):
        raise GraphFileError(f"{path} is not a MuseBridge decoder graph (inputs {sorted(inputs)})")
    cache = next(i for i in graph.input if i.name == "cache")
    cache_dims, logits_dims = inputs["cache"], outputs["logits"]
    if (len(cache_dims) != 6 or not all(isinstance(d, int) and d > 0 for i, d in enumerate(cache_dims) if i != 2)
            or len(logits_dims) != 2 or not isinstance(logits_dims[1], int)):
        raise GraphFileError(f"{path} has cache {list(cache_dims)} and logits {list(logits_dims)}; export it again")
    return GraphIO(path, inputs, outputs, cache.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16)


Shape = tuple[int, ...]


def profile_shapes(io: GraphIO, max_batch: int = MAX_BATCH, max_tokens: int = MAX_TOKENS,
                   opt_tokens: int = OPT_TOKENS) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes of every input with a dynamic dim: "batch" 1/1/max_batch, "n"
    1/opt_tokens/max_tokens, fixed dims exactly. Inputs with fixed shapes need no profile entry."""
    ranges = {"batch": (1, 1, max_batch), "n": (1, min(opt_tokens, max_tokens), max_tokens)}
    out = {}
    for name, dims in io.inputs.items():
        if all(isinstance(d, int) and d > 0 for d in dims):
            continue
        per_dim = []
        for d in dims:
            if isinstance(d, int) and d > 0:
                per_dim.append((d, d, d))
            elif d in ranges:
                per_dim.append(ranges[d])
            else:
                raise GraphFileError(f"{io.path}: input {name} has a dynamic dim {d!r} with no TensorRT range; "
                                     "export the graph again")
        out[name] = tuple(tuple(r[k] for r in per_dim) for k in range(3))
    return out


def io_layout(batch: int, n: int) -> tuple[int, int, int, int]:
    """Word offsets of tokens [B,n], feats [B,n,5] and start in the one int64 upload buffer, and
    the words used: one host-to-device copy per run, each tensor on a 256-byte boundary."""
    def align(words: int) -> int:
        return -(-words // ALIGN_WORDS) * ALIGN_WORDS

    tokens = 0
    feats = align(batch * n)
    start = feats + align(batch * n * 5)
    return tokens, feats, start, start + 1


# --- is it here? (cheap, and never imports torch: available_backends asks on every open) ---------------
def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _torch_has_cuda() -> bool:
    """A CUDA build of torch is installed (its lib/ holds libtorch_cuda), found without importing it."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    lib = Path(spec.origin).parent / "lib"
    return any(lib.glob("libtorch_cuda*")) or any(lib.glob("torch_cuda*"))


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible to this process (CUDA_VISIBLE_DEVICES honoured), asked of the driver
    through ctypes: no torch, no TensorRT. 0 without a driver."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    try:
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except AttributeError:
        return 0


def tensorrt_available() -> bool:
    """TensorRT, onnx, a device-memory library (a CUDA build of torch, or cupy) and a CUDA device."""
    if not (_importable("tensorrt") and _importable("onnx")):
        return False
    if not (_torch_has_cuda() or _importable("cupy")):
        return False
    return cuda_device_count() > 0


# --- device memory: the one place that knows torch or cupy ---------------------------------------------
class TorchMemory:
    """Buffers as torch tensors on one CUDA stream. device="cpu" runs the same code on host
    memory (stream 0): the tests drive the runtime's bookkeeping with it where there is no GPU."""

    library = "torch"

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._stream = torch.cuda.Stream(device=self.device)
            self.stream: int = self._stream.cuda_stream
        else:
            self._stream, self.stream = None, 0

    def _on_stream(self):
        return self.torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()

    def gpu(self) -> tuple[str, str]:
        """(name, compute capability) -- part of the engine cache key."""
        if self._stream is None:
            return "cpu", "0.0"
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return self.torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    def zeros(self, shape, dtype):
        with self._on_stream():
            return self.torch.zeros(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)

    def ptr(self, array) -> int:
        return array.data_ptr()

    def upload(self, dst, host: np.ndarray) -> None:
        """host (1-D) into the start of dst (1-D), ordered on the stream."""
        with self._on_stream():
            dst[: host.size].copy_(self.torch.from_numpy(host))

    def download(self, src) -> np.ndarray:
        """A host copy of src once the stream's work is done."""
        if self._stream is not None:
            self._stream.synchronize()
        with self._on_stream():
            return src.detach().to("cpu", copy=True).numpy()

    def fork_cache(self, src, n: int, rows: int):
        """A zeroed cache of batch n holding src's batch row 0, rows 0..rows-1, in every row."""
        shape = list(src.shape)
        shape[2] = n
        with self._on_stream():
            dst = self.torch.zeros(shape, dtype=src.dtype, device=src.device)
            dst[:, :, :, :, :rows] = src[:, :, :1, :, :rows]
        return dst


class CupyMemory:
    """Buffers as cupy arrays on one CUDA stream (for machines with TensorRT but no CUDA torch)."""

    library = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self.stream: int = self._stream.ptr

    def gpu(self) -> tuple[str, str]:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return name, f"{props['major']}.{props['minor']}"

    def zeros(self, shape, dtype):
        with self._stream:
            return self.cp.zeros(tuple(shape), dtype=np.dtype(dtype))

    def ptr(self, array) -> int:
        return int(array.data.ptr)

    def upload(self, dst, host: np.ndarray) -> None:
        dst[: host.size].set(host, stream=self._stream)

    def download(self, src) -> np.ndarray:
        self._stream.synchronize()
        return src.get(stream=self._stream)

    def fork_cache(self, src, n: int, rows: int):
        shape = list(src.shape)
        shape[2] = n
        with self._stream:
            dst = self.cp.zeros(shape, dtype=src.dtype)
            dst[:, :, :, :, :rows] = src[:, :, :1, :, :rows]
        return dst


def device_memory():
    """torch CUDA tensors if torch has CUDA here, else cupy arrays, else a one-line BackendError."""
    if _importable("torch"):
        import torch

        if torch.cuda.is_available():
            return TorchMemory("cuda")
    if _importable("cupy"):
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                return CupyMemory()
        except cupy.cuda.runtime.CUDARuntimeError:
            pass
    raise BackendError("the tensorrt backend needs GPU buffers from a CUDA build of torch or from cupy "
                       "(pip install torch, or pip install cupy-cuda12x) and an NVIDIA GPU")


# --- TensorRT: one logger and one runtime per process -------------------------------------------------
_STATE: dict = {}


def _trt():
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer cannot load
        raise BackendError(f"the tensorrt backend is not available here: {INSTALL}") from None
    return trt


def _tools() -> dict:
    """{"trt", "logger", "runtime"}: made once (TensorRT warns when a second logger appears)."""
    trt = _trt()
    if _STATE.get("trt") is not trt:
        class ErrorLog(trt.ILogger):
            """Keeps TensorRT's errors for one-line messages instead of printing its log."""

            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors = (self.errors + [str(msg)])[-20:]

        logger = ErrorLog()
        _STATE.clear()
        _STATE.update(trt=trt, logger=logger, runtime=trt.Runtime(logger))
    return _STATE


def _last_error() -> str:
    errors = _STATE.get("logger").errors if _STATE.get("logger") is not None else []
    return _one_line(errors[-1], 160) if errors else "no details in TensorRT's log"


def _parser_errors(parser) -> str:
    msgs = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        try:
            op = err.node_operator() if hasattr(err, "node_operator") else ""
            msgs.append(f"{op}: {err.desc()}" if op else err.desc())
        except Exception:
            msgs.append(str(err))
    return _one_line("; ".join(msgs) or "no details", 200)


def _write_atomic(path: Path, blob) -> None:
    """Temp file + rename: a reader (another process opening the model) never sees half an engine."""
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(bytes(blob)), BackendError)


def build_engine(onnx_path: str | Path, out_path: str | Path, fp16: bool = True, max_batch: int = MAX_BATCH,
                 io: GraphIO | None = None) -> Path:
    """Build a graph file into a serialized engine at `out_path` (written atomically).

    fp16 graph: strongly typed, TensorRT keeps the graph's fp16 math. fp32 graph: strongly typed
    fp32 when fp16=False, else weakly typed with BuilderFlag.FP16 (TensorRT 10 only).
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    io = io or read_graph_io(onnx_path)
    tools = _tools()
    trt, logger = tools["trt"], tools["logger"]
    strongly_typed = io.cache_fp16 or not fp16
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BackendError(f"TensorRT {trt.__version__} cannot parse {onnx_path} ({_parser_errors(parser)})")
    config = builder.create_builder_config()
    if not strongly_typed:
        flag = getattr(trt.BuilderFlag, "FP16", None)
        if flag is None:
            raise BackendError(f"TensorRT {trt.__version__} builds fp16 engines from fp16 graphs only; use dtype fp16")
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(io, max_batch).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    logger.errors = []
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} ({_last_error()})")
    _write_atomic(out_path, blob)
    return out_path


def engine_mismatch(engine, io: GraphIO) -> str | None:
    """Why the engine is not this graph's (tensors, directions, dtypes), or None when it is."""
    trt = _tools()["trt"]
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    if names != set(INPUTS) | set(OUTPUTS):
        return f"its tensors are {sorted(names)}"
    for name in names:
        want = trt.TensorIOMode.INPUT if name in INPUTS else trt.TensorIOMode.OUTPUT
        if engine.get_tensor_mode(name) != want:
            return f"{name} is not an {'input' if name in INPUTS else 'output'}"
    want = {"tokens": np.int64, "feats": np.int64, "start": np.int64, "cache": io.cache_dtype,
            "cache_out": io.cache_dtype, "logits": np.float32}
    for name, dtype in want.items():
        got = engine.get_tensor_dtype(name)
        try:
            ok = np.dtype(trt.nptype(got)) == np.dtype(dtype)
        except TypeError:
            ok = False
        if not ok:
            return f"{name} is {got}, not {np.dtype(dtype).name}"
    return None


def load_engine(path: Path, io: GraphIO) -> tuple[object | None, str]:
    """(the engine in `path`, "") or (None, why not): missing, damaged or not this graph's."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, e.strerror or str(e)
    try:
        engine = _tools()["runtime"].deserialize_cuda_engine(data)
    except Exception as e:  # some versions raise on garbage instead of returning None
        return None, _one_line(e, 120)
    if engine is None:
        return None, _last_error()
    why = engine_mismatch(engine, io)
    return (None, why) if why else (engine, "")


def cached_engine(onnx_path: Path, io: GraphIO, mem, fp16: bool = True) -> tuple[object, Path, bool]:
    """(engine, its file, whether it was built now): loaded from the cache, else built into it.
    A damaged cache file is deleted and rebuilt -- it is only a cache."""
    trt = _tools()["trt"]
    path = engine_path(onnx_path, *mem.gpu(), trt.__version__, fp16=fp16)
    if path.is_file():
        engine, _ = load_engine(path, io)
        if engine is not None:
            return engine, path, False
        with contextlib.suppress(OSError):
            path.unlink()
    build_engine(onnx_path, path, fp16=fp16, io=io)
    engine, why = load_engine(path, io)
    if engine is None:
        raise BackendError(f"TensorRT {trt.__version__} built {path} but cannot use it ({why})")
    return engine, path, True


@dataclass
class TrtEngines:
    """A model's two engines (step: n = 1; chunk: 1..512), shared by every runtime made from them."""

    step: object  # tensorrt.ICudaEngine
    chunk: object
    io: GraphIO
    mem: object  # TorchMemory or CupyMemory
    paths: dict[str, Path]  # the engine files
    built: list[str] = field(default_factory=list)  # kinds built by this open (the rest came from the cache)
    host_start: dict[str, bool] = field(default_factory=dict)  # per kind: `start` goes in host memory
    runtime: object = None  # the trt.Runtime: must outlive its engines
    # Every context (one per runtime and kind) uses the engines' one optimization profile, which
    # TensorRT allows only for contexts not in concurrent use: runs take this lock.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def engine(self, kind: str):
        return self.step if kind == "step" else self.chunk


def load_engines(paths: dict[str, Path], fp16: bool = True) -> TrtEngines:
    """The step and chunk engines of two graph files, from the engine cache or built into it."""
    paths = {k: Path(p) for k, p in paths.items()}
    ios = {k: read_graph_io(paths[k]) for k in ("step", "chunk")}
    if ios["step"].cache_dims != ios["chunk"].cache_dims or ios["step"].vocab_size != ios["chunk"].vocab_size:
        raise GraphFileError(f"{paths['step']} and {paths['chunk']} belong to different models; export them again")
    tools = _tools()
    mem = device_memory()
    loaded = {k: cached_engine(paths[k], ios[k], mem, fp16) for k in ("step", "chunk")}
    host = {k: {n for n in INPUTS if _is_shape_io(v[0], n)} for k, v in loaded.items()}
    if any(names - {"start"} for names in host.values()):
        raise BackendError(f"TensorRT reads {sorted(set().union(*host.values()))} of the graph as shapes; export it again")
    return TrtEngines(loaded["step"][0], loaded["chunk"][0], ios["step"], mem, {k: v[1] for k, v in loaded.items()},
                      [k for k, v in loaded.items() if v[2]], {k: "start" in names for k, names in host.items()},
                      tools["runtime"])


def _is_shape_io(engine, name: str) -> bool:
    """TensorRT wants this input in host memory: it computes shapes from its value."""
    return bool(engine.is_shape_inference_io(name)) if hasattr(engine, "is_shape_inference_io") else False


# --- the runtime -----------------------------------------------------------------------------------------
def _check_batch(batch: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise BackendError(f"the tensorrt backend runs 1 to {MAX_BATCH} rows at once, not {batch}")


class TrtRuntime(CachedRuntime):
    """CachedRuntime on TensorRT engines with a ping-pong KV cache on the GPU."""

    name = "tensorrt"

    def __init__(self, engines: TrtEngines, vocab: Vocabulary, batch: int = 1):
        if engines.io.vocab_size != len(vocab):
            raise GraphFileError(f"{engines.io.path} has {engines.io.vocab_size} tokens "
                                 f"but the vocabulary has {len(vocab)}")
        _check_batch(batch)
        super().__init__(vocab, engines.io.context, batch)
        self.engines = engines
        self._alloc(engines.mem.zeros(engines.io.cache_shape(batch), engines.io.cache_dtype))

    @classmethod
    def open(cls, model_dir=None, batch: int = 1, dtype: str | None = None, threads: int | None = None,
             device: str | None = None, onnx_dir: str | Path | None = None) -> "TrtRuntime":
        """A runtime for a model folder: engines from its cached graphs (built on first use), or from
        the graphs in `onnx_dir`. dtype "fp16" (the GPU's, the default) or "fp32" (strict fp32, for
        checking). The GPU only: `device` None or "cuda"; `threads` is not used."""
        dtype = dtype or "fp16"
        if device not in (None, "cuda"):
            raise BackendError(f"the tensorrt backend runs on the GPU (device cuda), not {device}")
        if dtype not in ("fp16", "fp32"):
            raise BackendError(f"the tensorrt backend builds from fp16 or fp32 graphs, not {dtype}")
        _check_batch(batch)
        folder = model_folder(model_dir)
        vocab = load_vocab(folder)
        fp16 = dtype == "fp16"
        return cls(decoder_graphs(folder, dtype, lambda paths: load_engines(paths, fp16), onnx_dir), vocab, batch)

    # --- buffers ------------------------------------------------------------------------------
    def _alloc(self, cache) -> None:
        """Two caches (read one, write the other, swap), the upload buffer, the logits, two contexts."""
        e, mem, b = self.engines, self.engines.mem, self.batch
        self.caches = [cache, mem.zeros(e.io.cache_shape(b), e.io.cache_dtype)]  # [current, next]
        self._host = np.zeros(io_layout(b, MAX_TOKENS)[3], np.int64)
        self._inputs = mem.zeros(self._host.shape, np.int64)
        self._start_host = np.zeros((), np.int64)  # used only when TensorRT wants `start` on the host
        self._logits = mem.zeros((b, e.io.vocab_size), np.float32)
        self._contexts, self._shapes = {}, {}
        for kind in ("step", "chunk"):
            ctx = e.engine(kind).create_execution_context()
            if ctx is None:
                raise BackendError(f"TensorRT cannot make an execution context for {e.paths[kind]} "
                                   f"({_last_error()}); is the GPU out of memory?")
            self._contexts[kind] = ctx

    def _set_shapes(self, kind: str, b: int, n: int) -> None:
        """Input shapes of the dynamic inputs, only when (b, n) changes for this context."""
        if self._shapes.get(kind) == (b, n):
            return
        engine, ctx = self.engines.engine(kind), self._contexts[kind]
        shapes = {"tokens": (b, n), "feats": (b, n, 5), "cache": self.engines.io.cache_shape(b)}
        for name, shape in shapes.items():
            if -1 in tuple(engine.get_tensor_shape(name)) and not ctx.set_input_shape(name, shape):
                raise BackendError(f"the tensorrt {kind} engine does not take {name} of shape {list(shape)} "
                                   f"({_last_error()})")
        self._shapes[kind] = (b, n)

    # --- the backend interface -----------------------------------------------------------------
    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        b, n = tokens.shape
        kind = "step" if n == 1 else "chunk"
        with self.engines.lock:
            return self._run_locked(kind, tokens, feats, start)

    def _run_locked(self, kind: str, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        b, n = tokens.shape
        mem, ctx = self.engines.mem, self._contexts[kind]
        tok, fea, sta, used = io_layout(b, n)
        self._host[tok : tok + b * n] = tokens.reshape(-1)
        self._host[fea : fea + b * n * 5] = feats.reshape(-1)
        self._host[sta] = start
        mem.upload(self._inputs, self._host[:used])
        base = mem.ptr(self._inputs)
        on_host = self.engines.host_start.get(kind, False)
        if on_host:
            self._start_host[...] = start
        self._set_shapes(kind, b, n)
        addresses = {"tokens": base + 8 * tok, "feats": base + 8 * fea,
                     "start": self._start_host.ctypes.data if on_host else base + 8 * sta,
                     "cache": mem.ptr(self.caches[0]), "cache_out": mem.ptr(self.caches[1]),
                     "logits": mem.ptr(self._logits)}
        for name, address in addresses.items():
            if not ctx.set_tensor_address(name, address):
                raise BackendError(f"TensorRT refused the {name} buffer of the {kind} engine ({_last_error()})")
        if not ctx.execute_async_v3(mem.stream):
            raise BackendError(f"TensorRT failed to run the {kind} engine ({_last_error()})")
        self.caches.reverse()  # what was written is the cache now; the old one is written next run
        return mem.download(self._logits)

    def _clear(self) -> None:
        pass  # rows at or past `position` are never read (masked): the next prefill overwrites them

    def _fork_cache(self, n: int) -> "TrtRuntime":
        _check_batch(n)
        new = object.__new__(TrtRuntime)
        CachedRuntime.__init__(new, self.vocab, self.context, n)
        new.engines = self.engines
        new._alloc(self.engines.mem.fork_cache(self.caches[0], n, self.position))
        return new
