"""Baselines for an honest comparison, trained on the same shards as the transformer.

* `NGramModel`: a 4-gram with interpolated absolute discounting (D = 0.75) backing off
  to a smoothed unigram -- a real distribution over the whole vocabulary. Counts are
  kept as sorted int64 n-gram keys (numpy), so fitting ten million tokens takes seconds
  and the saved file is a plain .npz (no pickle).
* `LSTMModel`: the seeds' baseline, an LSTM language model with about the transformer's
  parameter count (tied embeddings), trained by the same loop (`musebridge train --arch lstm`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from musebridge.errors import MuseBridgeError

from ..decode.runtime import CachedRuntime


class NGramModel:
    """Interpolated absolute-discounting n-gram LM over token ids."""

    def __init__(self, vocab_size: int, order: int = 4, discount: float = 0.75):
        if vocab_size ** (order - 1) >= 2**62:
            raise ValueError("vocabulary too large for int64 n-gram keys at this order")
        self.V, self.order, self.D = vocab_size, order, discount
        self.keys: list[np.ndarray] = []  # per order n>=2: sorted keys of (context, next)
        self.counts: list[np.ndarray] = []
        self.ctx_keys: list[np.ndarray] = []  # per order: sorted context keys
        self.ctx_counts: list[np.ndarray] = []
        self.ctx_types: list[np.ndarray] = []  # distinct continuations per context
        self.unigram = np.ones(vocab_size)

    def _ctx(self, tokens: np.ndarray, n: int, end: np.ndarray) -> np.ndarray:
        """Key of the n-1 tokens before positions `end`."""
        key = np.zeros(len(end), np.int64)
        for j in range(n - 1, 0, -1):
            key = key * self.V + tokens[end - j]
        return key

    def fit(self, tokens: np.ndarray, pad: int | None = None) -> "NGramModel":
        tokens = np.asarray(tokens, np.int64)
        self.unigram = np.bincount(tokens, minlength=self.V).astype(np.float64) + 1.0  # add-one
        self.unigram /= self.unigram.sum()
        for n in range(2, self.order + 1):
            pos = np.arange(n - 1, len(tokens))
            ctx = self._ctx(tokens, n, pos)
            full = ctx * self.V + tokens[pos]
            k, c = np.unique(full, return_counts=True)
            self.keys.append(k)
            self.counts.append(c)
            ck, cc = np.unique(ctx, return_counts=True)
            kc = k // self.V
            types = np.bincount(np.searchsorted(ck, kc), minlength=len(ck))
            self.ctx_keys.append(ck)
            self.ctx_counts.append(cc)
            self.ctx_types.append(types)
        return self

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, q: np.ndarray) -> np.ndarray:
        i = np.searchsorted(keys, q)
        i = np.minimum(i, len(keys) - 1)
        hit = keys[i] == q
        return np.where(hit, values[i], 0)

    def log_probs(self, tokens: np.ndarray, start: int = 1) -> np.ndarray:
        """Natural-log probability of tokens[start:], each given what precedes it."""
        tokens = np.asarray(tokens, np.int64)
        pos = np.arange(start, len(tokens))
        p = self.unigram[tokens[pos]]
        for n in range(2, self.order + 1):
            i = n - 2
            ok = pos >= n - 1
            safe = np.where(ok, pos, n - 1)
            ctx = self._ctx(tokens, n, safe)
            cc = self._lookup(self.ctx_keys[i], self.ctx_counts[i], ctx).astype(np.float64)
            ct = self._lookup(self.ctx_keys[i], self.ctx_types[i], ctx).astype(np.float64)
            c = self._lookup(self.keys[i], self.counts[i], ctx * self.V + tokens[safe]).astype(np.float64)
            seen = ok & (cc > 0)
            denom = np.maximum(cc, 1.0)
            interp = np.maximum(c - self.D, 0) / denom + (self.D * ct / denom) * p
            p = np.where(seen, interp, p)
        return np.log(p)

    def next_log_probs(self, context: list[int]) -> np.ndarray:
        """log p(v | the last order-1 tokens of `context`) for every token v: [V]."""
        p = self.unigram.copy()
        every = np.arange(self.V, dtype=np.int64)
        for n in range(2, self.order + 1):
            if len(context) < n - 1:
                break
            i = n - 2
            ctx = np.array([0], np.int64)
            for t in context[len(context) - (n - 1):]:
                ctx = ctx * self.V + int(t)
            cc = float(self._lookup(self.ctx_keys[i], self.ctx_counts[i], ctx)[0])
            if cc <= 0:
                continue
            ct = float(self._lookup(self.ctx_keys[i], self.ctx_types[i], ctx)[0])
            c = self._lookup(self.keys[i], self.counts[i], ctx[0] * self.V + every).astype(np.float64)
            p = np.maximum(c - self.D, 0) / cc + (self.D * ct / cc) * p
        return np.log(p)

    def save(self, path: str | Path) -> None:
        arrays = {"meta": np.array([self.V, self.order, self.D]), "unigram": self.unigram}
        for i in range(len(self.keys)):
            arrays.update({f"k{i}": self.keys[i], f"c{i}": self.counts[i], f"ck{i}": self.ctx_keys[i],
                           f"cc{i}": self.ctx_counts[i], f"ct{i}": self.ctx_types[i]})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "NGramModel":
        try:
            with np.load(path, allow_pickle=False) as z:
                v, order, d = z["meta"]
                m = cls(int(v), int(order), float(d))
                m.unigram = z["unigram"]
                for i in range(int(order) - 1):
                    m.keys.append(z[f"k{i}"])
                    m.counts.append(z[f"c{i}"])
                    m.ctx_keys.append(z[f"ck{i}"])
                    m.ctx_counts.append(z[f"cc{i}"])
                    m.ctx_types.append(z[f"ct{i}"])
        except (OSError, KeyError, ValueError) as e:
            raise MuseBridgeError(f"n-gram file {path} is unreadable ({e}); refit it with musebridge train --arch ngram") from None
        return m


def lstm_hidden_for(params: int, vocab_size: int, d_embed: int, layers: int = 2) -> int:
    """LSTM width whose parameter count comes closest to `params` (tied embeddings)."""
    best, best_gap = 64, math.inf
    for h in range(64, 2049, 16):
        n = vocab_size * d_embed + 4 * h * (d_embed + h + 2) + (layers - 1) * 4 * h * (2 * h + 2) + h * d_embed
        if abs(n - params) < best_gap:
            best, best_gap = h, abs(n - params)
    return best


def lstm_model(vocab_size: int, d_embed: int, hidden: int, layers: int = 2, dropout: float = 0.0):
    """An LSTM LM taking (tokens, feats) like MuseModel (features unused)."""
    import torch.nn as nn

    class LSTMModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = {"arch": "lstm", "vocab_size": vocab_size, "d_embed": d_embed, "hidden": hidden, "layers": layers}
            self.tok = nn.Embedding(vocab_size, d_embed)
            # the tied embedding starts at std 0.02 (the output head's scale): normalise it on
            # the way in, or the LSTM sees near-zero inputs and learns little beyond unigrams
            self.norm = nn.LayerNorm(d_embed)
            self.lstm = nn.LSTM(d_embed, hidden, num_layers=layers, batch_first=True, dropout=dropout)
            self.proj = nn.Linear(hidden, d_embed, bias=False)
            self.head = nn.Linear(d_embed, vocab_size, bias=False)
            self.head.weight = self.tok.weight
            nn.init.normal_(self.tok.weight, 0.0, 0.02)

        def num_params(self) -> int:
            return sum(p.numel() for p in self.parameters())

        def forward(self, tokens, feats=None, dense=False):
            y, _ = self.lstm(self.norm(self.tok(tokens)))
            return self.head(self.proj(y))

    return LSTMModel()


class NGramRuntime(CachedRuntime):
    """The n-gram behind the decode interface, so it is sampled by exactly the code that
    samples the transformer (same controls, grammar and stopping rule): the continuation
    benchmark's "what would a 4-gram play" baseline. It keeps no cache; the history that
    `CachedRuntime` keeps is its context."""

    name = "ngram"

    def __init__(self, model: NGramModel, vocab, context: int = 1 << 20, batch: int = 1):
        super().__init__(vocab, context, batch)
        self.model = model

    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        return np.stack([self.model.next_log_probs(h) for h in self.history]).astype(np.float32)

    def _clear(self) -> None:
        pass

    def _fork_cache(self, n: int) -> "NGramRuntime":
        return NGramRuntime(self.model, self.vocab, self.context, n)
