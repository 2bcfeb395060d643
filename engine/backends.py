"""Pick a decoder backend by name: every one is a `CachedRuntime` (prefill/append/step/fork).

    auto         onnxruntime when it is installed, else torch
    onnxruntime  engine/ort_runtime.py: the app's default; graphs built from the weights on
                 first use (no torch needed); CUDA when onnxruntime-gpu is installed
    torch        engine/torch_runtime.py: the reference (and training machines)
    tensorrt     ONNX Runtime's TensorRT provider (fp16 engines cached beside the graph);
                 needs an NVIDIA GPU and onnxruntime-gpu
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from musebridge.errors import MuseBridgeError

from .runtime import CachedRuntime

BACKENDS = ("onnxruntime", "torch", "tensorrt")
INSTALL = {
    "onnxruntime": "pip install onnxruntime onnx",
    "torch": "pip install torch==2.13.0 (the CPU build) and pip install -e '.[train]'",
    "tensorrt": "pip install onnxruntime-gpu on a machine with an NVIDIA GPU and CUDA",
}


class BackendError(MuseBridgeError):
    """A backend that is unknown or not installed here."""


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_backends() -> list[str]:
    """Backends usable on this machine, in the order `auto` prefers them."""
    out = []
    if _importable("onnxruntime") and _importable("onnx"):
        out.append("onnxruntime")
    if _importable("torch"):
        out.append("torch")
    if "onnxruntime" in out:
        import onnxruntime as ort

        if "TensorrtExecutionProvider" in ort.get_available_providers():
            out.append("tensorrt")
    return out


def resolve_backend(backend: str = "auto") -> str:
    """The backend `open_runtime` would use for `backend`, or a one-line error saying what to install."""
    if backend not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    have = available_backends()
    if backend == "auto":
        if not have:
            raise BackendError(f"no decoder backend is installed: {INSTALL['onnxruntime']}")
        return have[0]
    if backend not in have:
        raise BackendError(f"the {backend} backend is not available here: {INSTALL[backend]}")
    return backend


def open_runtime(model_dir: str | Path | None = None, backend: str = "auto", batch: int = 1, *,
                 dtype: str | None = None, threads: int | None = None, device: str | None = None,
                 onnx_dir: str | Path | None = None) -> CachedRuntime:
    """A runtime of batch `batch` for a model folder (default: the shipped model).

    dtype: onnxruntime graphs "fp32" (CPU default), "fp16" (GPU default) or "int8".
    threads: CPU threads (default: physical cores for onnxruntime, torch's own default).
    device: "cpu"/"cuda" (default: the GPU when the backend has one).
    onnx_dir: graphs written by `musebridge export` instead of the cached build.
    """
    name = resolve_backend(backend)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if name in ("onnxruntime", "tensorrt"):
        from .ort_runtime import OrtRuntime

        dev = "tensorrt" if name == "tensorrt" else device
        return OrtRuntime.open(model_dir, batch, dtype=dtype, threads=threads, device=dev, onnx_dir=onnx_dir)
    import torch

    from .checkpoint import load_model
    from .torch_runtime import TorchRuntime

    if threads:
        torch.set_num_threads(threads)
    dev = device or "cpu"
    model, vocab, _ = load_model(model_dir, device=dev)
    if not hasattr(model, "forward_cached"):
        raise BackendError(f"{model_dir} is not a transformer model; it cannot decode with a KV cache")
    return TorchRuntime(model, vocab, batch, device=dev)
