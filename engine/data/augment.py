"""Sample-time augmentation on token windows (MuseNet: transposition, volume, tempo).

All three work on ids through the vocabulary's lookup tables, so a training step never
decodes to MIDI: transposition shifts note ids by whole pitch strides (kept inside every
family's range; drums never move), velocity scaling remaps velocity bins, and tempo
stretch (seconds mode only, where waits are absolute) rescales waits.
"""

from __future__ import annotations

import numpy as np

from ..music.vocab import INSTRUMENT, NOTE, WAIT, Vocabulary

# Families a melodic part may be re-voiced onto. The bass keeps its part (its role is the
# register, and POP909-band's bass is written for it) and drums are not pitched.
REVOICE_FAMILIES = ("piano", "chromatic_percussion", "organ", "guitar", "strings", "ensemble", "brass", "reed",
                    "pipe", "synth_lead", "synth_pad")


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


def revoice(tokens: np.ndarray, vocab: Vocabulary, rng: np.random.Generator) -> np.ndarray:
    """One melodic part of the window moved onto another family that can play all of it.

    MuseNet learnt instruments from data that had them all; ours has folk lines on one
    family, quartets on strings, POP909 on a few band families. Moving a part (its notes,
    its pedal and its instrument token) to a family the window does not use, inside the
    new family's range, makes a prompt on any family familiar. Notes of one instant stay
    in the encoder's canonical order (offs, then onsets, by family and pitch), so the
    window is still one the tokenizer could have written.
    """
    tokens = np.asarray(tokens)
    kind, fam = vocab.kind[tokens], vocab.family[tokens]
    used = set(int(f) for f in np.unique(fam[(kind == NOTE) | (kind == INSTRUMENT)]))
    movable = [fi for fi in sorted(used) if vocab.families[fi].name in REVOICE_FAMILIES
               and np.any((kind == NOTE) & (fam == fi))]
    if not movable:
        return np.array(tokens, copy=True)
    src = int(rng.choice(movable))
    notes = (kind == NOTE) & (fam == src)
    lo, hi = int(vocab.pitch[tokens[notes]].min()), int(vocab.pitch[tokens[notes]].max())
    targets = [fi for fi in (vocab.family_index.get(n) for n in REVOICE_FAMILIES)
               if fi is not None and fi not in used and vocab.families[fi].low <= lo and hi <= vocab.families[fi].high]
    if not targets:
        return np.array(tokens, copy=True)
    dst = int(rng.choice(targets))
    return _move_family(tokens, vocab, src, dst)


def _move_family(tokens: np.ndarray, vocab: Vocabulary, src: int, dst: int) -> np.ndarray:
    """Every token of family `src` (notes, pedal, instrument) as family `dst`'s."""
    lut = np.arange(len(vocab), dtype=np.int64)
    f_src, f_dst = vocab.families[src], vocab.families[dst]
    stride = vocab.note_stride[src]
    if stride != vocab.note_stride[dst]:
        raise ValueError(f"{f_src.name} and {f_dst.name} notes are laid out differently")
    for p in range(max(f_src.low, f_dst.low), min(f_src.high, f_dst.high) + 1):
        a = vocab.note_base[src] + (p - f_src.low) * stride
        b = vocab.note_base[dst] + (p - f_dst.low) * stride
        lut[a : a + stride] = np.arange(b, b + stride)
    lut[vocab.instrument(f_src.name)] = vocab.instrument(f_dst.name)
    for down in (False, True):
        ps, pd = vocab.pedal(src, down), vocab.pedal(dst, down)
        if ps is not None and pd is not None:
            lut[ps] = pd
    out = lut[tokens.astype(np.int64)]
    return _canonical_instants(out, vocab).astype(tokens.dtype)


def _canonical_instants(tokens: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """Runs of note tokens (one instant) and of instrument tokens (the prefix) re-sorted
    as the encoder sorts them: note-offs before onsets, then by family and pitch."""
    kind = vocab.kind[tokens]
    out = tokens.copy()
    n = len(tokens)
    i = 0
    while i < n:
        k = kind[i]
        if k not in (NOTE, INSTRUMENT):
            i += 1
            continue
        j = i
        while j < n and kind[j] == k:
            j += 1
        if j - i > 1:
            run = out[i:j]
            if k == INSTRUMENT:
                out[i:j] = np.sort(run)
            else:
                key = np.lexsort((vocab.pitch[run], vocab.family[run], vocab.vbin[run] > 0))
                out[i:j] = run[key]
        i = j
    return out


def augment(tokens: np.ndarray, vocab: Vocabulary, rng: np.random.Generator, max_semitones: int = 6,
            velocity_range: tuple[float, float] = (0.8, 1.2), stretch_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """All augmentations that apply to this vocabulary, with random amounts."""
    out = random_transpose(tokens, vocab, rng, max_semitones)
    out = scale_velocity(out, vocab, float(rng.uniform(*velocity_range)))
    if vocab.config.time_mode == "seconds":
        out = stretch_time(out, vocab, float(rng.uniform(*stretch_range)))
    return out
