"""The backend registry: a decoder backend by name, every one a `CachedRuntime` (prefill/append/step/fork).

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

One way, as mido's backends: RUNTIMES names each backend's module, imported (importlib) only
when that backend is opened or, for tensorrt, asked whether it is usable; the runtimes import
the interface (`runtime.CachedRuntime`), never this registry or each other. This module
imports no numpy, so the CLI's options list the names without loading the engine.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from musebridge.errors import BackendError

if TYPE_CHECKING:
    from .runtime import CachedRuntime

# name -> (module, class): each class opens with `open(model_dir, batch, dtype=, threads=, device=, onnx_dir=)`
RUNTIMES = {
    "onnxruntime": ("musebridge.engine.decode.ort_runtime", "OrtRuntime"),
    "torch": ("musebridge.engine.decode.torch_runtime", "TorchRuntime"),
    "tensorrt": ("musebridge.engine.decode.trt_runtime", "TrtRuntime"),
}
BACKENDS = tuple(RUNTIMES)
AUTO = ("onnxruntime", "torch")  # what `auto` may pick, in order; tensorrt only by name (see the module doc)
NEEDS = {"onnxruntime": ("onnxruntime", "onnx"), "torch": ("torch",)}  # packages, found without importing them
INSTALL = {
    "onnxruntime": "pip install onnxruntime onnx",
    "torch": "pip install torch==2.13.0 (the CPU build) and pip install -e '.[train]'",
}

__all__ = ["AUTO", "BACKENDS", "BackendError", "RUNTIMES", "available_backends", "install_hint", "open_runtime",
           "resolve_backend"]


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _module(name: str):
    return importlib.import_module(RUNTIMES[name][0])


def install_hint(name: str) -> str:
    """What to install for a backend (tensorrt's lives in its module, which names it in its own errors)."""
    return INSTALL[name] if name in INSTALL else _module(name).INSTALL


def available_backends() -> list[str]:
    """Backends usable on this machine: those `auto` may pick, in its order (AUTO), then tensorrt
    where it is usable (an NVIDIA GPU with TensorRT), which runs only when asked for by name.
    Cheap, and it never imports torch.
    """
    out = [b for b in AUTO if all(_importable(p) for p in NEEDS[b])]
    if _module("tensorrt").tensorrt_available():
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
            raise BackendError(f"no decoder backend is installed: {install_hint('onnxruntime')}")
        return picks[0]
    if backend not in have:
        raise BackendError(f"the {backend} backend is not available here: {install_hint(backend)}")
    return backend


def open_runtime(model_dir: str | Path | None = None, backend: str = "auto", batch: int = 1, *,
                 dtype: str | None = None, threads: int | None = None, device: str | None = None,
                 onnx_dir: str | Path | None = None) -> CachedRuntime:
    """A runtime of batch `batch` for a model folder (default: the shipped model).

    dtype: onnxruntime graphs "int8" (CPU default: `ort_runtime.CPU_DTYPE`), "fp16" (GPU default) or "fp32"; tensorrt
        engines "fp16" (default) or "fp32".
    threads: CPU threads (default: physical cores for onnxruntime, torch's own default).
    device: "cpu"/"cuda" (default: the GPU when the backend has one); onnxruntime also takes
        "tensorrt" (ORT's own TensorRT provider).
    onnx_dir: graphs written by `musebridge export` instead of the cached build.
    """
    name = resolve_backend(backend)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    runtime_class = getattr(_module(name), RUNTIMES[name][1])
    runtime = runtime_class.open(model_dir, batch, dtype=dtype, threads=threads, device=device, onnx_dir=onnx_dir)
    from ..training.checkpoint import DEFAULT_MODEL

    runtime.source = str(model_dir or DEFAULT_MODEL)  # named in ModelOutputError
    return runtime
