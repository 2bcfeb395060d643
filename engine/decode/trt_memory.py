"""GPU buffers for the TensorRT backend, and whether it can run here at all.

TensorRT's Python API takes raw device pointers and allocates nothing for
us: buffers are torch CUDA tensors when torch has CUDA, else cupy arrays
(`device_memory`). tokens, feats and start travel in one int64 upload per run.

`tensorrt_available` is cheap and never imports torch: the backend registry asks it on
every listing of the backends.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path

import numpy as np

from musebridge.errors import BackendError


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
