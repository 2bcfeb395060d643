"""Training batches: windows of tokens with their feature rows, style-rebalanced.

A window starts at a random point of a piece picked by style-rebalanced weight and
runs on through the split's stream (short folk tunes pack several to a window, each
with its own prefix). A window cut mid-piece starts with its piece's prefix (start,
style, instruments), as MuseNet's samples do, so the model learns to follow the
conditioning it is given at generation time -- without that, the style and instrument
tokens are seen only at the rare window that crosses a piece's first token (measured:
the shipped model trained so put the same instruments after every style token).
Feature rows come from the whole stream, computed once, so a
window cut mid-piece still knows its beat phase. Part and countdown are withheld from
a share of windows (`structure_dropout`) so the model also works when the length of
what it generates is unknown -- as in a live jam.
"""

from __future__ import annotations

import numpy as np

from musebridge.errors import DataError

from .augment import random_transpose, revoice, scale_velocity
from .dataset import TokenShards
from ..music.features import UNKNOWN, add_structure, features
from ..music.vocab import INSTRUMENT, STYLE


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
        self.prefix_len = np.array([_prefix_len(self.tokens, int(o), int(n), self.vocab)
                                    for o, n in zip(self.offsets, self.lengths)], np.int64)

    def batch(self, size: int, rng: np.random.Generator, augment: bool = True, max_transpose: int = 6,
              structure_dropout: float = 0.5, prefix_share: float = 0.0,
              revoice_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, T+1], feats [B, T+1, 5]): inputs are [:, :-1], targets [:, 1:].

        `revoice_share` of the augmented windows have one melodic part moved to another
        family (`augment.revoice`)."""
        t = self.length + 1
        n = len(self.tokens)
        toks = np.full((size, t), self.vocab.pad, np.int64)
        feats = np.zeros((size, t, 5), np.int64)
        feats[..., 3:] = UNKNOWN
        picks = rng.choice(len(self.offsets), size=size, p=self.weights)
        for row, i in enumerate(picks):
            off, k = int(self.offsets[i]), int(self.prefix_len[i])
            start = int(off + rng.integers(0, max(int(self.lengths[i]) - 1, 1)))
            if start < off + k:  # inside the prefix: from the piece's first token
                start = off
            head = np.arange(off, off + k) if start > off and rng.random() < prefix_share else np.arange(0)
            end = min(start + t - len(head), n)
            idx = np.concatenate([head, np.arange(start, end)])  # stream positions of the window's tokens
            w = self.tokens[idx].astype(np.int64)
            if augment:
                w = random_transpose(w, self.vocab, rng, max_transpose)
                w = scale_velocity(w, self.vocab, float(rng.uniform(0.8, 1.2)))
                if revoice_share and rng.random() < revoice_share:
                    w = revoice(w, self.vocab, rng)
            toks[row, : len(w)] = w
            feats[row, : len(w)] = self.feats[idx]
            if rng.random() >= structure_dropout:
                pi = np.searchsorted(self.offsets, idx, side="right") - 1
                sub = feats[row, : len(w)]
                add_structure(sub, idx - self.offsets[pi], self.lengths[pi])
        return toks, feats


def _prefix_len(tokens: np.ndarray, offset: int, length: int, vocab) -> int:
    """How many of a piece's first tokens are its prefix: start, style, instruments."""
    if length == 0 or int(tokens[offset]) != vocab.start:
        return 0
    k = 1
    while k < min(length, 32) and vocab.kind[int(tokens[offset + k])] in (STYLE, INSTRUMENT):
        k += 1
    return k
