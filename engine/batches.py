"""Training batches: windows of tokens with their feature rows, style-rebalanced.

A window starts at a random point of a piece picked by style-rebalanced weight and
runs on through the split's stream (short folk tunes pack several to a window, each
with its own prefix). Feature rows come from the whole stream, computed once, so a
window cut mid-piece still knows its beat phase. Part and countdown are withheld from
a share of windows (`structure_dropout`) so the model also works when the length of
what it generates is unknown -- as in a live jam.
"""

from __future__ import annotations

import numpy as np

from musebridge.errors import DataError

from .augment import random_transpose, scale_velocity
from .dataset import TokenShards
from .features import UNKNOWN, add_structure, features


class WindowSampler:
    def __init__(self, shards: TokenShards, split: str, length: int, style_power: float = 0.5):
        self.shards = shards
        self.vocab = shards.vocab
        self.length = length
        self.tokens = np.asarray(shards.tokens(split))
        if len(self.tokens) < 2:
            raise DataError(f"split {split!r} of {shards.folder} holds no tokens; build more pieces into it")
        self.feats = features(self.tokens, self.vocab).astype(np.uint8)
        pieces = shards.split_pieces(split)
        self.offsets = np.array([p["offset"] for p in pieces], np.int64)
        self.lengths = np.array([p["tokens"] for p in pieces], np.int64)
        self.weights = shards.style_weights(split, style_power)

    def batch(self, size: int, rng: np.random.Generator, augment: bool = True, max_transpose: int = 6,
              structure_dropout: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, T+1], feats [B, T+1, 5]): inputs are [:, :-1], targets [:, 1:]."""
        t = self.length + 1
        n = len(self.tokens)
        toks = np.full((size, t), self.vocab.pad, np.int64)
        feats = np.zeros((size, t, 5), np.int64)
        feats[..., 3:] = UNKNOWN
        picks = rng.choice(len(self.offsets), size=size, p=self.weights)
        for row, i in enumerate(picks):
            start = int(self.offsets[i] + rng.integers(0, max(int(self.lengths[i]) - 1, 1)))
            end = min(start + t, n)
            w = self.tokens[start:end].astype(np.int64)
            if augment:
                w = random_transpose(w, self.vocab, rng, max_transpose)
                w = scale_velocity(w, self.vocab, float(rng.uniform(0.8, 1.2)))
            toks[row, : len(w)] = w
            feats[row, : len(w)] = self.feats[start:end]
            if rng.random() >= structure_dropout:
                pos = np.arange(start, end)
                pi = np.searchsorted(self.offsets, pos, side="right") - 1
                sub = feats[row, : len(w)]
                add_structure(sub, pos - self.offsets[pi], self.lengths[pi])
        return toks, feats
