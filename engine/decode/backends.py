"""Pick a decoder backend by name: every one is a `CachedRuntime` (prefill/append/step/fork).

    auto         the first of AUTO available here: onnxruntime, else torch. Never tensorrt:
                 no run of its engines on a GPU is recorded yet (docs/PERFORMANCE.md "GPU"),
                 so it is opt-in, by name, until one is
    onnxruntime  engine/decode/ort_runtime.py: the default on CPUs; graphs built from the weights on
                 first use (no torch needed); CUDA when onnxruntime-gpu is installed, and ORT's
                 own TensorRT provider with device="tensorrt"
    torch        engine/decode/torch_runtime.py: the reference (and training machines)
    tensorrt     engine/decode/trt_runtime.py, opt-in: fp16 engines built from the graphs with TensorRT's
                 Python API (the first open builds them, a minute or so), cached in the user's
                 cache keyed by graph, GPU and TensorRT
                 version; needs an NVIDIA GPU, tensorrt, and torch (CUDA) or cupy for buffers
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from musebridge.errors import MuseBridgeError

from .runtime import CachedRuntime

BACKENDS = ("onnxruntime", "torch", "tensorrt")
AUTO = ("onnxruntime", "torch")  # what `auto` may pick, in order; tensorrt only by name (see the module doc)
INSTALL = {
    "onnxruntime": "pip install onnxruntime onnx",
    "torch": "pip install torch==2.13.0 (the CPU build) and pip install -e '.[train]'",
    "tensorrt": ("pip install tensorrt on a machine with an NVIDIA GPU, with a CUDA build of torch or cupy for "
                 "GPU buffers (ONNX Runtime on the GPU instead: pip install onnxruntime-gpu)"),
}


class BackendError(MuseBridgeError):
    """A backend that is unknown or not installed here."""


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_backends() -> list[str]:
    """Backends usable on this machine: those `auto` may pick, in its order (AUTO), then tensorrt
    where it is usable (an NVIDIA GPU with TensorRT), which runs only when asked for by name.
    Cheap, and it never imports torch.
    """
    from .trt_runtime import tensorrt_available

    out = []
    if _importable("onnxruntime") and _importable("onnx"):
        out.append("onnxruntime")
    if _importable("torch"):
        out.append("torch")
    if tensorrt_available():
        out.append("tensorrt")
    return out


def resolve_backend(backend: str = "auto") -> str:
    """The backend `open_runtime` would use for `backend`, or a one-line error saying what to install."""
    if backend not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    have = available_backends()
    if backend == "auto":
        picks = [b for b in AUTO if b in have]
        if not picks:
            raise BackendError(f"no decoder backend is installed: {INSTALL['onnxruntime']}")
        return picks[0]
    if backend not in have:
        raise BackendError(f"the {backend} backend is not available here: {INSTALL[backend]}")
    return backend


def open_runtime(model_dir: str | Path | None = None, backend: str = "auto", batch: int = 1, *,
                 dtype: str | None = None, threads: int | None = None, device: str | None = None,
                 onnx_dir: str | Path | None = None) -> CachedRuntime:
    """A runtime of batch `batch` for a model folder (default: the shipped model).

    dtype: onnxruntime graphs "fp32" (CPU default), "fp16" (GPU default) or "int8"; tensorrt
        engines "fp16" (default) or "fp32".
    threads: CPU threads (default: physical cores for onnxruntime, torch's own default).
    device: "cpu"/"cuda" (default: the GPU when the backend has one); onnxruntime also takes
        "tensorrt" (ORT's own TensorRT provider).
    onnx_dir: graphs written by `musebridge export` instead of the cached build.
    """
    runtime = _open(model_dir, resolve_backend(backend), batch, dtype, threads, device, onnx_dir)
    from ..training.checkpoint import DEFAULT_MODEL

    runtime.source = str(model_dir or DEFAULT_MODEL)  # named in ModelOutputError
    return runtime


def _open(model_dir, name: str, batch: int, dtype, threads, device, onnx_dir) -> CachedRuntime:
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if name == "tensorrt":
        from .trt_runtime import TrtRuntime

        if device not in (None, "cuda"):
            raise BackendError(f"the tensorrt backend runs on the GPU (device cuda), not {device}")
        return TrtRuntime.open(model_dir, batch, dtype=dtype or "fp16", onnx_dir=onnx_dir)
    if name == "onnxruntime":
        from .ort_runtime import OrtRuntime

        return OrtRuntime.open(model_dir, batch, dtype=dtype, threads=threads, device=device, onnx_dir=onnx_dir)
    import torch

    from ..training.checkpoint import load_model
    from .torch_runtime import TorchRuntime

    if threads:
        torch.set_num_threads(threads)
    dev = device or "cpu"
    model, vocab, _ = load_model(model_dir, device=dev)
    if not hasattr(model, "forward_cached"):
        raise BackendError(f"{model_dir} is not a transformer model; it cannot decode with a KV cache")
    return TorchRuntime(model, vocab, batch, device=dev)
