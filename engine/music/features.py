"""MuseNet's extra inputs per token, computed from the token ids alone.

Besides its id, every token carries: its time (sub-beat phase and beat within a
48-beat cycle -- 48 holds whole bars of 2/4, 3/4, 4/4 and 6/8 -- so simultaneous notes
share it), the index of a note within its chord, which of 128 parts of the piece it sits
in, and a countdown to the end token. The structural pair is only known when the
length of the piece is (training, or a target length for generation); otherwise both
take the `UNKNOWN` id, and training drops them now and then so the model works without.

`features(tokens)` does a whole window with numpy (training); `FeatureTracker` does the
same one token at a time (streaming decode), and the two agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import NOTE, WAIT, Vocabulary

N_PARTS = 128
UNKNOWN = N_PARTS  # id of an unknown part / countdown
BEAT_CYCLE = 48
MAX_CHORD = 16
COUNTDOWN_UNIT = 32  # tokens per countdown step: 127 steps reach ~4,000 tokens
SECONDS_TICKS_PER_BEAT = 50  # seconds mode: a "beat" of 0.5 s (10 ms ticks)
FEATURE_NAMES = ("phase", "beat", "chord", "part", "countdown")


def ticks_per_beat(vocab: Vocabulary) -> int:
    c = vocab.config
    return c.ticks_per_beat if c.time_mode == "beats" else SECONDS_TICKS_PER_BEAT


def features(tokens: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """[T, 5] int64 features (phase, beat, chord, part, countdown) of whole pieces.

    Time and chords restart at every `start` token, so a split's whole stream can be
    done at once (a window cut from the middle of a piece must take its rows from
    here, not recompute them: its phase depends on everything before it). Part and
    countdown are UNKNOWN here; `add_structure` fills them.
    """
    tokens = np.asarray(tokens)
    n = len(tokens)
    pos = np.arange(n)
    kind = vocab.kind[tokens]
    waits = np.where(kind == WAIT, vocab.value[tokens], 0).astype(np.int64)
    is_start = tokens == vocab.start
    cum = np.cumsum(waits)
    seg = np.maximum.accumulate(np.where(is_start, pos, 0))  # last start at or before
    time = cum - (cum - waits)[seg]  # ticks since that start, after this token
    is_on = (kind == NOTE) & (vocab.vbin[tokens] > 0)
    on_cum = np.cumsum(is_on)
    last_reset = np.maximum.accumulate(np.where((kind == WAIT) | is_start, pos, -1))
    ons_before = np.where(last_reset >= 0, on_cum[np.maximum(last_reset, 0)], 0)
    chord = np.where(is_on, np.minimum(on_cum - ons_before - 1, MAX_CHORD - 1), 0)
    tpb = ticks_per_beat(vocab)
    out = np.empty((n, 5), np.int64)
    out[:, 0] = time % tpb
    out[:, 1] = (time // tpb) % BEAT_CYCLE
    out[:, 2] = chord
    out[:, 3] = UNKNOWN
    out[:, 4] = UNKNOWN
    return out


def add_structure(feats: np.ndarray, index_in_piece: np.ndarray, piece_length: np.ndarray) -> None:
    """Fill part (which of 128 parts) and countdown (to the end token) in place."""
    idx = np.asarray(index_in_piece)
    n = np.maximum(np.asarray(piece_length), 1)
    feats[:, 3] = np.minimum(idx * N_PARTS // n, N_PARTS - 1)
    feats[:, 4] = np.clip((n - 1 - idx) // COUNTDOWN_UNIT, 0, N_PARTS - 1)


@dataclass
class FeatureTracker:
    """Streaming twin of `features`: feed tokens one by one, get their feature rows.

    `target_length`, when set, is the planned length of the piece in tokens, and the
    structural features count towards it (generation "for M bars" sets it).
    """

    vocab: Vocabulary
    tick: int = 0
    chord: int = 0
    index: int = 0
    target_length: int | None = None

    def __post_init__(self) -> None:
        self._tpb = ticks_per_beat(self.vocab)

    def row(self, token: int) -> np.ndarray:
        v = self.vocab
        kind = v.kind[token]
        if token == v.start:
            self.tick, self.chord = 0, 0
        chord = 0
        if kind == WAIT:
            self.tick += int(v.value[token])
            self.chord = 0
        elif kind == NOTE and v.vbin[token] > 0:
            chord = min(self.chord, MAX_CHORD - 1)
            self.chord += 1
        part = countdown = UNKNOWN
        if self.target_length:
            n = self.target_length
            i = min(self.index, n - 1)
            part = min(i * N_PARTS // n, N_PARTS - 1)
            countdown = min(max((n - 1 - i) // COUNTDOWN_UNIT, 0), N_PARTS - 1)
        self.index += 1
        return np.array([self.tick % self._tpb, (self.tick // self._tpb) % BEAT_CYCLE, chord, part, countdown], np.int64)

    def rows(self, tokens) -> np.ndarray:
        return np.stack([self.row(int(t)) for t in tokens]) if len(tokens) else np.zeros((0, 5), np.int64)

    def copy(self) -> "FeatureTracker":
        return FeatureTracker(self.vocab, self.tick, self.chord, self.index, self.target_length)
