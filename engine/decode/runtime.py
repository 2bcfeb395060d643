"""The decode interface every runtime implements: prefill, append, step, reset, fork.

A runtime owns a static KV cache for one model and the token history that fills it.
`CachedRuntime` does the bookkeeping all backends share -- MuseNet's feature rows per
batch row, positions, and sliding the window when the context is full (the oldest
quarter is dropped and the rest re-prefilled, so a jam can go on for hours) -- and a
backend only runs the network (`_run`) and manages its cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from musebridge.errors import ModelOutputError

from ..music.features import FeatureTracker
from ..music.vocab import Vocabulary


class CachedRuntime(ABC):
    """Shared bookkeeping; subclasses implement `_run`, `_clear` and `_fork_cache`."""

    name = "base"
    source: str | None = None  # the model folder, for messages (set by `open_runtime`)

    def __init__(self, vocab: Vocabulary, context: int, batch: int = 1):
        self.vocab = vocab
        self.context = context
        self.batch = batch
        self.position = 0
        self.trackers = [FeatureTracker(vocab) for _ in range(batch)]
        self.history: list[list[int]] = [[] for _ in range(batch)]
        self.feature_history: list[list[np.ndarray]] = [[] for _ in range(batch)]
        self.slides = 0  # how many times the window slid (marks older than a slide are void)

    # --- what backends provide ------------------------------------------------------------
    @abstractmethod
    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        """tokens [B,n], feats [B,n,5] at positions start..start+n-1 -> logits [B,V] of the last."""

    @abstractmethod
    def _clear(self) -> None:
        """Forget the cache contents (the buffers stay allocated)."""

    @abstractmethod
    def _fork_cache(self, n: int) -> "CachedRuntime":
        """A runtime of batch n whose cache holds this one's rows 0..position-1."""

    # --- the interface ---------------------------------------------------------------------
    def reset(self) -> None:
        self.position = 0
        self.trackers = [FeatureTracker(self.vocab) for _ in range(self.batch)]
        self.history = [[] for _ in range(self.batch)]
        self.feature_history = [[] for _ in range(self.batch)]
        self._clear()

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Start over with a prompt (same for every row); logits [B,V] after its last token."""
        self.reset()
        return self.append(tokens)

    def append(self, tokens: Sequence[int]) -> np.ndarray:
        """Add the same tokens to every row (streaming prompt); cost is the new tokens only."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("append needs at least one token")
        return self._advance(np.tile(np.array(toks, np.int64), (self.batch, 1)))

    def step(self, tokens: Sequence[int] | int) -> np.ndarray:
        """One token per row; logits [B,V] for what comes next."""
        arr = np.atleast_1d(np.asarray(tokens, np.int64)).reshape(self.batch, 1)
        return self._advance(arr)

    def fork(self, n: int) -> "CachedRuntime":
        """n copies of this batch-1 runtime sharing its prompt (variations), no recompute."""
        if self.batch != 1:
            raise ValueError("fork a runtime of batch 1")
        new = self._fork_cache(n)
        new.source = self.source
        new.position = self.position
        new.trackers = [self.trackers[0].copy() for _ in range(n)]
        new.history = [list(self.history[0]) for _ in range(n)]
        new.feature_history = [list(self.feature_history[0]) for _ in range(n)]
        return new

    def mark(self) -> tuple:
        """A point to come back to with `rewind` (the realtime bridge marks as it generates)."""
        return (self.slides, self.position, [len(h) for h in self.history], [t.copy() for t in self.trackers])

    def rewind(self, mark: tuple) -> bool:
        """Forget every token after `mark`, in O(1): cache rows past the position are simply
        overwritten later. False (nothing changed) if the window slid since the mark."""
        slides, position, lengths, trackers = mark
        if slides != self.slides or len(lengths) != self.batch:
            return False
        self.position = position
        self.history = [h[:n] for h, n in zip(self.history, lengths)]
        self.feature_history = [fh[:n] for fh, n in zip(self.feature_history, lengths)]
        self.trackers = [t.copy() for t in trackers]
        return True

    def make_room(self, n: int) -> np.ndarray | None:
        """Slide the window now if `n` more tokens would not fit, so a mark taken next
        survives them (`rewind` cannot cross a slide); logits [B,V] after the kept tokens,
        or None when they fit (or sliding would free nothing)."""
        if self.position + n <= self.context or self.position <= self.context - self.context // 4:
            return None
        return self._checked(self._slide())

    # --- bookkeeping -------------------------------------------------------------------------
    def _advance(self, tokens: np.ndarray) -> np.ndarray:
        b, n = tokens.shape
        feats = np.stack([self.trackers[r].rows(tokens[r]) for r in range(b)])
        for r in range(b):
            self.history[r].extend(int(t) for t in tokens[r])
            self.feature_history[r].extend(feats[r])
        if self.position + n > self.context:
            return self._checked(self._slide())
        logits = None
        # long appends go in chunks so no single call holds n x context attention
        for s in range(0, n, 512):
            logits = self._run(tokens[:, s : s + 512], feats[:, s : s + 512], self.position)
            self.position += min(512, n - s)
        return self._checked(logits)

    def _checked(self, logits: np.ndarray) -> np.ndarray:
        """Logits as they came, if every one is a number (a few µs at V = 8487): NaN or
        infinity means damaged weights (or a runtime gone wrong), and sampling from them
        would pick garbage at full speed -- hundreds of notes at one instant -- so it stops here."""
        if not np.isfinite(logits).all():
            raise ModelOutputError(f"model {self.source or '(in memory)'} produced invalid numbers (NaN or infinity) "
                                   f"on {self.name}; its weights may be damaged: re-copy or retrain the model")
        return logits

    def _slide(self) -> np.ndarray:
        """The context is full: keep the newest three quarters and re-prefill them."""
        keep = self.context - self.context // 4
        toks = np.array([h[-keep:] for h in self.history], np.int64)
        feats = np.array([np.stack(fh[-keep:]) for fh in self.feature_history], np.int64)
        self.history = [h[-keep:] for h in self.history]
        self.feature_history = [fh[-keep:] for fh in self.feature_history]
        self._clear()
        self.position = 0
        self.slides += 1
        logits = None
        for s in range(0, keep, 512):
            logits = self._run(toks[:, s : s + 512], feats[:, s : s + 512], self.position)
            self.position += toks[:, s : s + 512].shape[1]
        return logits
