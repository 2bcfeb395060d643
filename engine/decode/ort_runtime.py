"""The ONNX Runtime backend: the app's default decoder (no torch anywhere on this path).

One session per graph file, shared by every runtime made from it (fork included). A
runtime owns one fixed-size cache buffer [L,2,B,H,C,D], allocated once and bound as
both the graph's `cache` input and its `cache_out` output, so ORT's ScatterND writes
the new rows in place and nothing grows or moves while decoding. A step refills
preallocated token/feature/position buffers that stay bound; the logits land in a
preallocated buffer too.

Providers: CPU by default; CUDA (and TensorRT through ORT) when onnxruntime-gpu is
installed -- the cache then lives on the GPU. The GPU paths are written but untested here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musebridge.errors import BackendError, GraphFileError
from musebridge.onnx_export.build import decoder_graphs, model_folder

from ..music.vocab import Vocabulary
from ..training.checkpoint import load_vocab
from .runtime import CachedRuntime


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def session_options(threads: int | None = None, spin: bool = True):
    """Tuned for batch-1 latency: intra-op threads = physical cores, sequential, all graph
    optimizations. `spin` False: the pool's threads sleep as soon as a run ends instead of
    spinning for the next one -- for the chunk graph, whose runs are long and far apart, so its
    idle threads never take a core from the step that follows (docs/PERFORMANCE.md "Tails")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def step_threads(step_path: Path) -> int | None:
    """Threads for a step graph when none are asked: half the physical cores (at least one) for
    the int8 graphs (`step-int8.onnx`), the rest left to the jam's own threads, the DAW and the
    synth. On 2 cores that is one thread: 25 % slower a step than two on an idle machine
    (0.81 vs 1.00 ms), but two spin-waiting threads took a p99 of 5x their median whenever
    anything else ran, where one kept 1.5x (docs/PERFORMANCE.md "Tails"). Prompts (the chunk
    graph) keep every physical core."""
    return max(1, physical_cores() // 2) if step_path.stem.endswith("int8") else None


def resolve_providers(device: str | None = None, cache_dir: Path | None = None) -> list:
    """ORT providers for "cpu", "cuda", "tensorrt" or None (CUDA when onnxruntime-gpu has it)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    device = device or ("cuda" if "CUDAExecutionProvider" in have else "cpu")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "tensorrt" and "TensorrtExecutionProvider" in have:
        opts = {"trt_fp16_enable": True}
        if cache_dir is not None:  # engines cached beside the graph; ORT keys them by GPU and TRT version
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir), trt_timing_cache_enable=True,
                        trt_timing_cache_path=str(cache_dir))
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
    raise BackendError(f"ONNX Runtime has no {device} provider here (it has {', '.join(have)}); "
                       "pip install onnxruntime-gpu on a machine with an NVIDIA GPU")


@dataclass
class OrtGraphs:
    """A model's two loaded graphs (step: n = 1; chunk: any n) and the sizes a runtime needs."""

    step: object  # onnxruntime.InferenceSession
    chunk: object
    path: Path  # the folder they came from
    n_layer: int
    n_head: int
    context: int
    head_dim: int
    vocab_size: int
    cache_dtype: type
    device: str  # "cpu" or "cuda": where the cache lives

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        return (self.n_layer, 2, batch, self.n_head, self.context, self.head_dim)


def ort_session(path: Path, threads: int | None, providers: list, spin: bool = True):
    """An ONNX Runtime session of a graph file with tuned options; a missing or damaged file
    is a one-line GraphFileError (the decoder's graphs and the critic's open through here)."""
    import onnxruntime as ort

    if not path.is_file():
        raise GraphFileError(f"{path} not found; write it with musebridge export")
    options = session_options(threads, spin)  # outside the try: a bad option is no damaged file
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own classes (InvalidProtobuf, Fail, ...) for damaged files
        msg = str(e).replace("\n", " ").split("] ", 1)[-1][:160]
        raise GraphFileError(f"{path} is not a usable ONNX graph ({msg}); delete it and export or open it again") from None


def _session(path: Path, threads: int | None, providers: list, spin: bool = True):
    sess = ort_session(path, threads, providers, spin)
    names = ({i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()})
    if names != ({"tokens", "feats", "start", "cache"}, {"logits", "cache_out"}):
        raise GraphFileError(f"{path} is not a MuseBridge decoder graph (inputs {sorted(names[0])})")
    return sess


def load_graphs(paths: dict[str, Path], threads: int | None = None, device: str | None = None) -> OrtGraphs:
    """Open the step and chunk graphs with tuned options; a damaged file is a one-line error."""
    paths = {k: Path(p) for k, p in paths.items()}
    providers = resolve_providers(device, paths["step"].parent)
    step = _session(paths["step"], threads or step_threads(paths["step"]), providers)
    chunk = _session(paths["chunk"], threads, providers, spin=False)
    cache = {i.name: i for i in step.get_inputs()}["cache"]
    if cache.shape != {i.name: i for i in chunk.get_inputs()}["cache"].shape:
        raise GraphFileError(f"{paths['step']} and {paths['chunk']} belong to different models; export them again")
    shape = cache.shape
    dtype = np.float16 if cache.type == "tensor(float16)" else np.float32
    vocab_size = int({o.name: o for o in step.get_outputs()}["logits"].shape[1])
    on_gpu = step.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    return OrtGraphs(step, chunk, paths["step"].parent, int(shape[0]), int(shape[3]), int(shape[4]), int(shape[5]),
                     vocab_size, dtype, "cuda" if on_gpu else "cpu")


# The CPU default: int8 weights (u8 x u8, exact on every CPU, docs/PERFORMANCE.md "int8") step
# 2-4x faster than fp32 here and keep the continuation benchmark's figures within seed noise
# (docs/PERFORMANCE.md "int8 as the CPU default"); `dtype="fp32"` asks for the float graphs.
CPU_DTYPE = "int8"


class OrtRuntime(CachedRuntime):
    """CachedRuntime on ONNX Runtime sessions with an in-place KV cache."""

    name = "onnxruntime"

    def __init__(self, graphs: OrtGraphs, vocab: Vocabulary, batch: int = 1):
        if graphs.vocab_size != len(vocab):
            raise GraphFileError(f"{graphs.path} has {graphs.vocab_size} tokens but the vocabulary has {len(vocab)}")
        super().__init__(vocab, graphs.context, batch)
        self.graphs = graphs
        self._alloc(np.zeros(graphs.cache_shape(batch), graphs.cache_dtype))

    @classmethod
    def open(cls, model_dir=None, batch: int = 1, dtype: str | None = None, threads: int | None = None,
             device: str | None = None, onnx_dir: str | Path | None = None) -> "OrtRuntime":
        """A runtime for a model folder: its cached graphs (built on first use), or those in `onnx_dir`.
        dtype None: fp16 on a GPU, `CPU_DTYPE` on the CPU."""
        folder = model_folder(model_dir)
        vocab = load_vocab(folder)
        if onnx_dir is None and dtype is None:
            import onnxruntime as ort

            gpu = device in ("cuda", "tensorrt") or (device is None and "CUDAExecutionProvider" in ort.get_available_providers())
            dtype = "fp16" if gpu else CPU_DTYPE
        return cls(decoder_graphs(folder, dtype, lambda paths: load_graphs(paths, threads, device), onnx_dir), vocab, batch)

    # --- buffers ------------------------------------------------------------------------------
    def _alloc(self, cache_host: np.ndarray) -> None:
        """Bind the cache (input and output: one buffer), the step inputs and the logits, once."""
        import onnxruntime as ort

        g, b = self.graphs, self.batch
        if g.device == "cpu":
            self.cache_host = cache_host  # the OrtValue wraps this array's memory: numpy sees the cache
            self.cache_value = ort.OrtValue.ortvalue_from_numpy(cache_host)
        else:
            self.cache_host = None
            self.cache_value = ort.OrtValue.ortvalue_from_shape_and_type(cache_host.shape, cache_host.dtype, "cuda", 0)
            self.cache_value.update_inplace(cache_host)
        self._tokens = np.zeros((b, 1), np.int64)
        self._feats = np.zeros((b, 1, 5), np.int64)
        self._start = np.zeros((), np.int64)
        self._logits = np.zeros((b, g.vocab_size), np.float32)
        self._values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (self._tokens, self._feats, self._start, self._logits)]
        tokens, feats, start, logits = self._values
        self.step_io, self.chunk_io = g.step.io_binding(), g.chunk.io_binding()
        for io in (self.step_io, self.chunk_io):
            io.bind_ortvalue_input("start", start)
            io.bind_ortvalue_input("cache", self.cache_value)
            io.bind_ortvalue_output("cache_out", self.cache_value)
            io.bind_ortvalue_output("logits", logits)
        self.step_io.bind_ortvalue_input("tokens", tokens)
        self.step_io.bind_ortvalue_input("feats", feats)

    # --- the backend interface -----------------------------------------------------------------
    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        self._start[...] = start
        if tokens.shape[1] == 1:
            self._tokens[...] = tokens
            self._feats[...] = feats
            self.graphs.step.run_with_iobinding(self.step_io)
        else:
            self.chunk_io.bind_cpu_input("tokens", np.ascontiguousarray(tokens, np.int64))
            self.chunk_io.bind_cpu_input("feats", np.ascontiguousarray(feats, np.int64))
            self.graphs.chunk.run_with_iobinding(self.chunk_io)
        return self._logits.copy()

    def _clear(self) -> None:
        pass  # rows at or past `position` are never read (masked): the next prefill overwrites them

    def _fork_cache(self, n: int) -> "OrtRuntime":
        src = self.cache_host if self.cache_host is not None else self.cache_value.numpy()
        cache = np.zeros(self.graphs.cache_shape(n), self.graphs.cache_dtype)
        p = self.position
        cache[:, :, :, :, :p] = src[:, :, :1, :, :p]  # batch row 0, broadcast to the n rows
        new = object.__new__(OrtRuntime)
        CachedRuntime.__init__(new, self.vocab, self.context, n)
        new.graphs = self.graphs
        new._alloc(cache)
        return new
