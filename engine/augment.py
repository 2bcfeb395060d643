"""Sample-time augmentation on token windows (MuseNet: transposition, volume, tempo).

All three work on ids through the vocabulary's lookup tables, so a training step never
decodes to MIDI: transposition shifts note ids by whole pitch strides (kept inside every
family's range; drums never move), velocity scaling remaps velocity bins, and tempo
stretch (seconds mode only, where waits are absolute) rescales waits.
"""

from __future__ import annotations

import numpy as np

from .vocab import NOTE, WAIT, Vocabulary


def transpose_range(tokens: np.ndarray, vocab: Vocabulary) -> tuple[int, int]:
    """Semitone shifts (lo, hi) that keep every pitched note of the window in range."""
    notes = vocab.kind[tokens] == NOTE
    fams = vocab.family[tokens[notes]]
    pitches = vocab.pitch[tokens[notes]]
    lo, hi = -127, 127
    for fi in np.unique(fams):
        f = vocab.families[int(fi)]
        if f.is_drums:
            continue
        p = pitches[fams == fi]
        lo = max(lo, f.low - int(p.min()))
        hi = min(hi, f.high - int(p.max()))
    return (0, 0) if lo > hi else (lo, hi)


def transpose(tokens: np.ndarray, vocab: Vocabulary, semitones: int) -> np.ndarray:
    """Shift every pitched note by `semitones`; raises if a note would leave its range."""
    out = np.array(tokens, copy=True)
    if semitones == 0:
        return out
    lo, hi = transpose_range(out, vocab)
    if not lo <= semitones <= hi:
        raise ValueError(f"transposition {semitones} leaves a family's range (allowed {lo}..{hi})")
    sel = vocab.kind[out] == NOTE
    fam = vocab.family[out]
    stride = np.array(vocab.note_stride)
    pitched = sel & ~np.array([f.is_drums for f in vocab.families])[np.maximum(fam, 0)]
    out[pitched] += semitones * stride[fam[pitched]]
    return out


def random_transpose(tokens: np.ndarray, vocab: Vocabulary, rng: np.random.Generator, max_semitones: int = 6) -> np.ndarray:
    """Transpose by a random shift in [-max, max], narrowed to what the window allows.

    Narrow `max_semitones` later in training (MuseNet did) to settle on real keys.
    """
    lo, hi = transpose_range(tokens, vocab)
    lo, hi = max(lo, -max_semitones), min(hi, max_semitones)
    if lo > hi:
        return np.array(tokens, copy=True)
    return transpose(tokens, vocab, int(rng.integers(lo, hi + 1)))


def scale_velocity(tokens: np.ndarray, vocab: Vocabulary, factor: float) -> np.ndarray:
    """Multiply every note-on velocity by `factor` (bins re-quantized, clipped to 1..127)."""
    sel = (vocab.kind == NOTE) & (vocab.vbin > 0)
    ids = np.nonzero(sel)[0]
    old_bin = vocab.vbin[ids].astype(np.int64)
    centers = np.array([vocab.bin_velocity(b) for b in range(1, vocab.config.velocity_bins + 1)])
    new_vel = np.clip(np.rint(centers[old_bin - 1] * factor), 1, 127).astype(np.int64)
    new_bin = np.searchsorted(vocab.velocity_edges, new_vel, side="right")
    lut = np.arange(len(vocab), dtype=np.int64)
    lut[ids] = ids + (new_bin - old_bin)
    return lut[np.asarray(tokens)].astype(np.asarray(tokens).dtype)


def stretch_time(tokens: np.ndarray, vocab: Vocabulary, factor: float) -> np.ndarray:
    """Seconds mode: play the window `factor` times slower (waits rescaled, rounded).

    The result's length differs from the input's; crop or pad it to the window.
    """
    if vocab.config.time_mode != "seconds":
        raise ValueError("tempo stretch needs a seconds-mode vocabulary (beats-mode waits are tempo-free)")
    tokens = np.asarray(tokens)
    is_wait = vocab.kind[tokens] == WAIT
    ticks = np.where(is_wait, vocab.value[tokens], 0.0)
    when = np.cumsum(ticks)  # tick time after each token
    keep = ~is_wait
    new_when = np.rint(when[keep] * factor).astype(np.int64)
    out: list[int] = []
    now = 0
    biggest = vocab.config.max_wait_ticks
    for tok, t in zip(tokens[keep], new_when):
        gap = int(t) - now
        while gap > 0:
            step = min(gap, biggest)
            out.append(vocab.wait(step))
            gap -= step
        now = max(now, int(t))
        out.append(int(tok))
    return np.array(out, dtype=tokens.dtype)


def augment(tokens: np.ndarray, vocab: Vocabulary, rng: np.random.Generator, max_semitones: int = 6,
            velocity_range: tuple[float, float] = (0.8, 1.2), stretch_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """All augmentations that apply to this vocabulary, with random amounts."""
    out = random_transpose(tokens, vocab, rng, max_semitones)
    out = scale_velocity(out, vocab, float(rng.uniform(*velocity_range)))
    if vocab.config.time_mode == "seconds":
        out = stretch_time(out, vocab, float(rng.uniform(*stretch_range)))
    return out
