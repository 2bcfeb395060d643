"""The TensorRT backend: engines built from the ONNX graphs with TensorRT's own Python API.

Not ONNX Runtime's TensorRT provider: one engine per graph, built once and kept, and a
decode step that is two small copies and one `execute_async_v3` -- nothing between us
and the kernels. (ORT's provider stays reachable as the onnxruntime backend's own
device="tensorrt".)

The cache. ORT writes the cache in place (input and output bound to one buffer).
TensorRT does not promise that aliasing an input with an output is safe, so a runtime
holds two cache buffers and swaps them after every run: the graph's ScatterND output is
the whole cache with the new rows, i.e. one full-cache copy per step -- microseconds at
GPU bandwidth. Rows past `position` are never read (masked), so nothing is cleared; both
buffers start zeroed because a masked row still gets multiplied by a zero weight, and
0 * NaN from uninitialised memory would poison the logits.

The engines (`trt_engines.py`: built once per graph, GPU and TensorRT version and cached)
and the GPU buffers (`trt_memory.py`: torch or cupy) are the two modules beside this one.

Written against TensorRT 10's Python API; this path has not run on a GPU here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musebridge.errors import BackendError, GraphFileError
from musebridge.onnx_export.build import decoder_graphs, model_folder

from ..music.vocab import Vocabulary
from ..training.checkpoint import load_vocab
from .runtime import CachedRuntime
from .trt_engines import INSTALL, MAX_BATCH, MAX_TOKENS, TrtEngines, last_error, load_engines
from .trt_memory import tensorrt_available

__all__ = ["INSTALL", "MAX_BATCH", "TrtRuntime", "io_layout", "tensorrt_available"]

ALIGN_WORDS = 32  # 256 bytes of int64: where each of tokens/feats/start starts in the upload buffer


def io_layout(batch: int, n: int) -> tuple[int, int, int, int]:
    """Word offsets of tokens [B,n], feats [B,n,5] and start in the one int64 upload buffer, and
    the words used: one host-to-device copy per run, each tensor on a 256-byte boundary."""
    def align(words: int) -> int:
        return -(-words // ALIGN_WORDS) * ALIGN_WORDS

    tokens = 0
    feats = align(batch * n)
    start = feats + align(batch * n * 5)
    return tokens, feats, start, start + 1


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
                                   f"({last_error()}); is the GPU out of memory?")
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
                                   f"({last_error()})")
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
                raise BackendError(f"TensorRT refused the {name} buffer of the {kind} engine ({last_error()})")
        if not ctx.execute_async_v3(mem.stream):
            raise BackendError(f"TensorRT failed to run the {kind} engine ({last_error()})")
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
