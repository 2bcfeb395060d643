"""Reading built shards: the manifest, per-split token memmaps and training windows.

Windows are sampled per piece with weights that rebalance styles (the music21 corpus
is 57% folk and 24% Palestrina by notes; without rebalancing the model would learn
little else), then cut from the split's memmap -- no copy of the corpus in memory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musebridge.errors import DataError, VocabError

from .data_build import DATA_FORMAT, DATA_VERSION
from ..music.vocab import Vocabulary


@dataclass(frozen=True)
class SplitStats:
    pieces: int
    notes: int
    tokens: int


class TokenShards:
    """A built data folder: `manifest.json`, `vocab.json` and `<split>.bin` memmaps."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        man = self.folder / "manifest.json"
        if not man.is_file():
            raise DataError(f"{folder} has no manifest.json; build it with: musebridge data build --out {folder} ...")
        try:
            self.manifest = json.loads(man.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{man} is unreadable ({e}); rebuild with musebridge data build --fresh") from None
        if self.manifest.get("format") != DATA_FORMAT or self.manifest.get("version") != DATA_VERSION:
            raise DataError(f"{man} is not a MuseBridge data manifest of version {DATA_VERSION}; rebuild it")
        try:
            self.vocab = Vocabulary.load(self.folder / self.manifest["vocab"])
        except VocabError as e:
            raise DataError(str(e)) from None
        self.pieces: list[dict] = self.manifest["pieces"]
        self._tokens: dict[str, np.ndarray] = {}

    def tokens(self, split: str) -> np.ndarray:
        """The split's whole token stream, memory-mapped."""
        if split not in self._tokens:
            info = self.manifest["splits"][split]
            path = self.folder / info["file"]
            n = max(info["tokens"], 1)
            if not path.is_file() or path.stat().st_size < 2 * n:
                raise DataError(f"{path} is missing or truncated; rebuild with musebridge data build")
            self._tokens[split] = np.memmap(path, dtype=np.uint16, mode="r", shape=(n,))[: info["tokens"]]
        return self._tokens[split]

    def split_pieces(self, split: str, sources: tuple[str, ...] = ()) -> list[dict]:
        """The split's pieces, or only those of the named collections (`source` in the
        manifest, e.g. `pop909_band`: the band-context test set); a source the folder
        lacks is one line."""
        pieces = [p for p in self.pieces if p["split"] == split]
        if not sources:
            return pieces
        known = sorted({p["source"] for p in self.pieces})
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise DataError(f"{self.folder} has no source {', '.join(map(repr, unknown))}; it holds {', '.join(known)}")
        picked = [p for p in pieces if p["source"] in sources]
        if not picked:
            raise DataError(f"the {split} split of {self.folder} holds no piece of {', '.join(sources)}")
        return picked

    def piece_tokens(self, piece: dict) -> np.ndarray:
        return self.tokens(piece["split"])[piece["offset"] : piece["offset"] + piece["tokens"]]

    def stats(self) -> tuple[dict[str, SplitStats], dict[str, dict[str, SplitStats]]]:
        """Totals per split, and per style label per split."""
        by_split: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        by_style: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
        for p in self.pieces:
            for acc in (by_split[p["split"]], by_style[p["style"]][p["split"]]):
                acc[0] += 1
                acc[1] += p["notes"]
                acc[2] += p["tokens"]
        splits = {s: SplitStats(*v) for s, v in by_split.items()}
        styles = {st: {s: SplitStats(*v) for s, v in d.items()} for st, d in by_style.items()}
        return splits, styles

    def style_weights(self, split: str, power: float = 0.5) -> np.ndarray:
        """Per-piece sampling weights: tokens, with each style's share flattened by `power`.

        power 1 keeps natural proportions; 0 gives every style the same share.
        """
        pieces = self.split_pieces(split)
        tok = np.array([p["tokens"] for p in pieces], np.float64)
        style_tok: dict[str, float] = defaultdict(float)
        for p, n in zip(pieces, tok):
            style_tok[p["style"]] += n
        scale = np.array([style_tok[p["style"]] ** (power - 1.0) for p in pieces])
        w = tok * scale
        return w / w.sum()

    def sample_windows(self, split: str, batch: int, length: int, rng: np.random.Generator, power: float = 0.5) -> np.ndarray:
        """`batch` windows of `length` tokens, each from one piece (pieces picked by weight).

        A piece shorter than the window is padded with the vocabulary's pad id.
        """
        pieces = self.split_pieces(split)
        if not pieces:
            raise DataError(f"split {split!r} of {self.folder} holds no pieces")
        idx = rng.choice(len(pieces), size=batch, p=self.style_weights(split, power))
        out = np.full((batch, length), self.vocab.pad, dtype=np.int64)
        for row, i in enumerate(idx):
            toks = self.piece_tokens(pieces[i])
            start = int(rng.integers(0, max(len(toks) - length, 0) + 1))
            w = toks[start : start + length]
            out[row, : len(w)] = w
        return out
