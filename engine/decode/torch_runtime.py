"""The PyTorch runtime (training machines, CUDA, and the reference for the others).

On CUDA the decode step is one CUDA graph: at batch 1 a step of this small model is a
few hundred tiny kernels, and launching them one by one from Python costs more than
running them. The step reads its inputs from static buffers (token, features, position
as a tensor), so the graph captured once replays at any position; the KV cache tensors
never move, so the captured writes land in the live cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from musebridge.errors import BackendError

from ..music.vocab import Vocabulary
from ..training.checkpoint import load_model
from ..training.model import KVCache, MuseModel
from .runtime import CachedRuntime


class StepGraph:
    """One decode step over static buffers; captured as a CUDA graph when `capture`.

    Without capture (CPU, or graphs turned off) it runs the same static-buffer code
    eagerly, which is what the CPU tests hold equal to the plain path.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], batch: int,
                 device: torch.device, capture: bool):
        self.fn = fn
        self.tokens = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.feats = torch.zeros((batch, 1, 5), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        self.capture = capture
        self.graph: "torch.cuda.CUDAGraph | None" = None
        self.logits: torch.Tensor | None = None

    def __call__(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> torch.Tensor:
        self.tokens.copy_(torch.from_numpy(tokens), non_blocking=True)
        self.feats.copy_(torch.from_numpy(feats), non_blocking=True)
        self.pos.fill_(start)
        if not self.capture:
            return self.fn(self.tokens, self.feats, self.pos)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS/cuDNN pick their kernels), then capture. Both
        run the real step: writing the same keys at the same position is idempotent."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(self.tokens, self.feats, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.fn(self.tokens, self.feats, self.pos)
        self.graph = graph


class TorchRuntime(CachedRuntime):
    name = "torch"

    def __init__(self, model: MuseModel, vocab: Vocabulary, batch: int = 1, device: str | None = None,
                 cuda_graphs: bool | None = None):
        """cuda_graphs: replay the step as a CUDA graph (default: on CUDA). True on the CPU
        runs the graph's static-buffer path eagerly."""
        super().__init__(vocab, model.cfg.context, batch)
        self.device = torch.device(device or next(model.parameters()).device)
        self.model = model.to(self.device).eval()
        self.cache = KVCache(model.cfg, batch, device=self.device)
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._step: StepGraph | None = None

    @classmethod
    def open(cls, model_dir: str | Path | None = None, batch: int = 1, dtype: str | None = None,
             threads: int | None = None, device: str | None = None, onnx_dir: str | Path | None = None) -> "TorchRuntime":
        """A runtime for a model folder (default: the shipped model) on `device` (default: the CPU);
        `threads`: torch's CPU threads. The weights' own dtype; `onnx_dir` is not used."""
        if threads:
            torch.set_num_threads(threads)
        dev = device or "cpu"
        model, vocab, _ = load_model(model_dir, device=dev)
        if not hasattr(model, "forward_cached"):
            raise BackendError(f"{model_dir} is not a transformer model; it cannot decode with a KV cache")
        return cls(model, vocab, batch, device=dev)

    @torch.inference_mode()
    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        if tokens.shape[1] == 1 and start > 0 and self.cuda_graphs:
            return self._static_step()(tokens, feats, start)[:, -1].float().cpu().numpy()
        t = torch.from_numpy(tokens).to(self.device)
        f = torch.from_numpy(feats).to(self.device)
        if start == 0:
            logits = self.model.prefill_into(t, f, self.cache)
        else:
            logits = self.model.forward_cached(t, f, self.cache, start)
        return logits[:, -1].float().cpu().numpy()

    def _static_step(self) -> StepGraph:
        if self._step is None:
            model, cache = self.model, self.cache
            self._step = StepGraph(lambda t, f, p: model.forward_at(t, f, cache, p), self.batch, self.device,
                                   capture=self.device.type == "cuda")
        return self._step

    def _clear(self) -> None:
        pass  # rows past `position` are never read: prefill overwrites what it needs

    def _fork_cache(self, n: int) -> "TorchRuntime":
        new = object.__new__(TorchRuntime)
        CachedRuntime.__init__(new, self.vocab, self.context, n)
        new.device, new.model, new.cuda_graphs, new._step = self.device, self.model, self.cuda_graphs, None
        new.cache = self.cache.repeat(n, self.position)
        return new
