"""TensorRT engines of the decoder graphs: a graph's I/O read with onnx, its engines built,
cached and loaded with TensorRT's Python API (one logger and one runtime per process).

The step graph (n = 1) and the chunk graph (1..512 tokens: CachedRuntime never
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
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musebridge.errors import BackendError, GraphFileError
from musebridge.files import write_atomic
from musebridge.onnx_export.build import cache_root

from .trt_memory import device_memory

INSTALL = ("pip install tensorrt on a machine with an NVIDIA GPU, with a CUDA build of torch or cupy for "
           "GPU buffers (ONNX Runtime on the GPU instead: pip install onnxruntime-gpu)")
ENGINE_BUILDER_VERSION = 1  # bump when the build below changes: old engines then miss the cache
MAX_BATCH = 16  # rows per runtime (fork variations included)
MAX_TOKENS = 512  # tokens per chunk run: CachedRuntime never passes more
OPT_TOKENS = 64  # the chunk size TensorRT tunes for (appends are short; prompts come in 512s)
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


def last_error() -> str:
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
        raise BackendError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} ({last_error()})")
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
        return None, last_error()
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
