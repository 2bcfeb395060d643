"""The PyTorch runtime (training machines, CUDA, and the reference for the others)."""

from __future__ import annotations

import numpy as np
import torch

from .model import KVCache, MuseModel
from .runtime import CachedRuntime
from .vocab import Vocabulary


class TorchRuntime(CachedRuntime):
    name = "torch"

    def __init__(self, model: MuseModel, vocab: Vocabulary, batch: int = 1, device: str | None = None):
        super().__init__(vocab, model.cfg.context, batch)
        self.device = torch.device(device or next(model.parameters()).device)
        self.model = model.to(self.device).eval()
        self.cache = KVCache(model.cfg, batch, device=self.device)

    @torch.inference_mode()
    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        t = torch.from_numpy(tokens).to(self.device)
        f = torch.from_numpy(feats).to(self.device)
        if start == 0:
            logits = self.model.prefill_into(t, f, self.cache)
        else:
            logits = self.model.forward_cached(t, f, self.cache, start)
        return logits[:, -1].float().cpu().numpy()

    def _clear(self) -> None:
        pass  # rows past `position` are never read: prefill overwrites what it needs

    def _fork_cache(self, n: int) -> "TorchRuntime":
        new = object.__new__(TorchRuntime)
        CachedRuntime.__init__(new, self.vocab, self.context, n)
        new.device, new.model = self.device, self.model
        new.cache = self.cache.repeat(n, self.position)
        return new
