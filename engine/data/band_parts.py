"""The band's parts on a POP909 song's grid: its tracks voiced on band families, a bass line
from the chord annotations, and drums cut bar by bar from a Groove MIDI beat.

Each takes the song's rng (`band_source.song_rng`), so a song's band is the same every
build; `band_source.read_band_song` puts them together.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from musebridge.errors import DataError, MuseBridgeError

from ..music.events import Note, Pedal, Piece
from ..music.families import FAMILY_BY_NAME, fold_into_range
from ..music.midi_file import read_midi
from .pop909 import Chord, Grid, Part

LEAD_FAMILIES = ("synth_lead", "reed", "guitar", "brass")
BRIDGE_FAMILIES = ("guitar", "strings", "synth_pad")
ACCOMPANIMENT_FAMILIES = ("piano", "organ", "guitar")

BASS = FAMILY_BY_NAME["bass"]
BASS_LOW, BASS_HIGH = 28, 45  # where the bass's chord notes sit (E1..A2); fifths/octaves go above
# Per-song bass patterns: semitones above the chord's bass note on beats 1..4 of a bar
# (None: the last note rings on). A new chord always enters on its bass note.
BASS_PATTERNS: dict[str, tuple[int | None, ...]] = {
    "pulse": (0, 0, 0, 0),
    "half": (0, None, 7, None),
    "octave": (0, 12, 0, 12),
    "walk": (0, 7, 12, 7),
}

# Groove styles that sit under a pop song; jazz, latin, afro-cuban and the like do not.
DRUM_STYLES = frozenset({"pop", "rock", "soul", "funk", "hiphop", "dance", "country", "gospel", "blues"})
TEMPO_TOLERANCE = 1.12  # a Groove beat within 12 % of the song's tempo, else no drums
DRUM_CANDIDATES = 3  # the drums come from one of the nearest few in tempo (seeded)
MIN_GROOVE_BARS = 4  # a performance with fewer usable bars would loop one or two bars all song
MAX_GROOVE_TRIES = 8
KICKS, SNARES = (35, 36), (37, 38, 40)
EARLY = 0.125  # beats: a hit this much before a bar line belongs to the next bar
SUSTAIN_CAP = 0.75  # seconds: a guitar or organ rings on what the pedal held, at most this much longer


# ---------------------------------------------------------------------------------------
# Arrangement


def band_families(rng: np.random.Generator) -> dict[str, str]:
    """Track -> family: accompaniment, then bridge, then melody, each on a family of its own."""
    accompaniment = str(rng.choice(ACCOMPANIMENT_FAMILIES))
    bridge = str(rng.choice([f for f in BRIDGE_FAMILIES if f != accompaniment]))
    lead = str(rng.choice([f for f in LEAD_FAMILIES if f not in (accompaniment, bridge)]))
    return {"MELODY": lead, "BRIDGE": bridge, "PIANO": accompaniment}


def voice_part(part: Part, family: str, grid: Grid, keep_pedal: bool,
               sustain: bool) -> tuple[list[Note], list[Pedal]]:
    """A track's notes on a family (folded by octaves into its range), on the grid.

    Piano keeps its pedal; a guitar or organ holds what the pedal held (to the pedal's
    release, at most SUSTAIN_CAP longer, never past the next strike of the same key); a
    lead ignores it.
    """
    fam = FAMILY_BY_NAME[family]
    notes = sorted(part.notes)
    if sustain and part.pedals:
        notes = _apply_sustain(notes, part.pedals)
    if not notes:
        return [], []
    starts = grid.to_beats(np.array([n[0] for n in notes]))
    ends = grid.to_beats(np.array([n[1] for n in notes]))
    out = []
    for (_, _, pitch, vel), a, b in zip(notes, starts, ends):
        p = fold_into_range(pitch, fam)
        if p is not None:
            out.append(Note(float(a), float(max(b - a, 0.0)), p, vel, family))
    pedals = []
    if keep_pedal:
        times = grid.to_beats(np.array([t for t, _ in part.pedals])) if part.pedals else []
        pedals = [Pedal(float(max(t, 0.0)), family, down) for t, (_, down) in zip(times, part.pedals)]
    return out, pedals


def _apply_sustain(notes: list[tuple[float, float, int, int]], pedals: list[tuple[float, bool]]):
    events = sorted(pedals)
    times = np.array([t for t, _ in events])
    ups = np.array([t for t, down in events if not down])
    onsets: dict[int, list[float]] = {}
    for s, _, p, _ in notes:
        onsets.setdefault(p, []).append(s)
    out = []
    for s, e, p, v in notes:
        i = int(np.searchsorted(times, e, side="right")) - 1
        if i >= 0 and events[i][1]:  # the pedal is down when the key is released
            k = int(np.searchsorted(ups, e, side="left"))
            release = float(ups[k]) if k < len(ups) else e
            later = onsets[p][bisect.bisect_right(onsets[p], s):]
            e = max(e, min(release, later[0] if later else release, e + SUSTAIN_CAP))
        out.append((s, e, p, v))
    return out


def bass_line(chords: list[Chord], grid: Grid, accompaniment: list[Note], active: np.ndarray,
              rng: np.random.Generator) -> list[Note]:
    """Bass notes on the song's beats following the chords (and, where the chords say
    "N", the accompaniment's lowest voice), in one per-song pattern.

    A chord enters on its bass note (the root, or the slash bass of an inversion), placed
    in BASS_LOW..BASS_HIGH nearest the last one and under the accompaniment; the other
    beats of the pattern move to its fifth (octave over an inversion) or octave where that
    stays under the accompaniment's lowest note, or let it ring. `active[b]`: some part
    sounds during arrangement beat b; the bass rests elsewhere.
    """
    pattern = BASS_PATTERNS[str(rng.choice(list(BASS_PATTERNS)))]
    base = int(rng.integers(76, 92))
    n_beats = len(grid.beat_seconds)
    chord_at = _chord_per_beat(chords, grid.beat_seconds)
    lowest = _lowest_per_beat(accompaniment, grid, n_beats)
    beat_in_bar = _beat_in_bar(grid, n_beats)
    harmony: list[tuple | None] = [None] * n_beats  # what the bass follows on each beat
    for j in range(n_beats):
        if beat_in_bar[j] < 0 or not active[j + grid.offset]:
            continue
        chord = chord_at[j]
        if chord is not None and chord.bass is not None:
            harmony[j] = (chord.bass, chord.fifth if chord.bass == chord.root else 12, chord.start)
        elif lowest[j] is not None:
            harmony[j] = (lowest[j] % 12, 12, "lowest voice")
    onsets: list[tuple[int, int, int]] = []  # (beat index, pitch, velocity)
    anchor: int | None = None
    for j in range(n_beats):
        if harmony[j] is None:
            continue
        pc, fifth, _ = harmony[j]
        step = pattern[beat_in_bar[j] % len(pattern)]
        if j == 0 or harmony[j] != harmony[j - 1]:
            anchor = _place_bass(pc, anchor, lowest[j])
            step = 0
        if step is None or anchor is None:
            continue
        step = {7: fifth}.get(step, step)
        if step and lowest[j] is not None and anchor + step >= lowest[j]:
            step = 0  # a move never climbs into the chord: the bass stays under it
        pitch = fold_into_range(anchor + step, BASS)
        if pitch is None:
            continue
        pos = beat_in_bar[j]
        accent = 10 if pos == 0 else 4 if pos == 2 else 0
        onsets.append((j, pitch, int(np.clip(base + accent + rng.integers(-5, 6), 1, 127))))
    notes = []
    for i, (j, pitch, vel) in enumerate(onsets):
        nxt = onsets[i + 1][0] if i + 1 < len(onsets) else n_beats
        stop = j + 1
        while stop < nxt and harmony[stop] == harmony[j]:
            stop += 1
        notes.append(Note(float(j + grid.offset), 0.9 * (stop - j), pitch, vel, BASS.name))
    return notes


def _place_bass(pc: int, near: int | None, under: int | None) -> int:
    """The pitch of class `pc` in BASS_LOW..BASS_HIGH nearest `near` (else the lowest),
    below `under` where one is."""
    options = [p for p in range(BASS_LOW, BASS_HIGH + 1) if p % 12 == pc]
    if under is not None and any(p < under for p in options):
        options = [p for p in options if p < under]
    if near is None:
        return options[0]
    return min(options, key=lambda p: (abs(p - near), p))


def _chord_per_beat(chords: list[Chord], beats: np.ndarray) -> list[Chord | None]:
    """The chord sounding a quarter of a beat after each beat (spans snap to beats)."""
    starts = np.array([c.start for c in chords])
    out: list[Chord | None] = []
    step = np.diff(beats, append=beats[-1] + (beats[-1] - beats[-2]))
    for t, d in zip(beats, step):
        probe = t + 0.25 * d
        i = int(np.searchsorted(starts, probe, side="right")) - 1
        out.append(chords[i] if i >= 0 and chords[i].end > probe else None)
    return out


def _lowest_per_beat(notes: list[Note], grid: Grid, n_beats: int) -> list[int | None]:
    low: list[int | None] = [None] * n_beats
    for n in notes:
        a = max(math.floor(n.start + 1e-6) - grid.offset, 0)
        b = min(math.ceil(n.end - 1e-6) - grid.offset, n_beats)
        for j in range(a, max(b, a + 1)):
            if j < n_beats and (low[j] is None or n.pitch < low[j]):
                low[j] = n.pitch
    return low


def _beat_in_bar(grid: Grid, n_beats: int) -> list[int]:
    """Each annotated beat's place in its bar (-1 before the first downbeat)."""
    out = [-1] * n_beats
    for start, n in grid.bars():
        for k in range(n):
            j = start - grid.offset + k
            if j < n_beats:
                out[j] = k
    return out


def activity(notes: list[Note], length: int) -> np.ndarray:
    """active[b]: some note sounds during arrangement beat b."""
    active = np.zeros(length + 1, bool)
    for n in notes:
        a = max(math.floor(n.start), 0)
        b = min(max(math.ceil(n.end), a + 1), length + 1)
        active[a:b] = True
    return active


# ---------------------------------------------------------------------------------------
# Drums from Groove


@dataclass(frozen=True)
class GrooveBeat:
    path: str
    bpm: float
    style: str
    split: str | None


@lru_cache(maxsize=4)
def groove_index(folder: str) -> tuple[GrooveBeat, ...]:
    """The 4/4 "beat" performances of a Groove folder in pop-like styles, from its info.csv."""
    info = Path(folder) / "info.csv"
    if not info.is_file():
        raise DataError(f"{folder} has no info.csv; pop909-band's drums need the Groove MIDI Dataset folder")
    out = []
    with info.open(newline="") as f:
        for row in csv.DictReader(f):
            style = (row.get("style") or "").split("/")[0].strip().lower()
            try:
                bpm = float(row.get("bpm") or "nan")
            except ValueError:
                continue
            if (row.get("beat_type") != "beat" or row.get("time_signature") != "4-4"
                    or style not in DRUM_STYLES or not math.isfinite(bpm) or bpm <= 0
                    or not row.get("midi_filename")):
                continue
            split = {"validation": "val"}.get(row.get("split", ""), row.get("split") or None)
            out.append(GrooveBeat(str(Path(folder) / row["midi_filename"]), bpm, style, split))
    return tuple(sorted(out, key=lambda g: g.path))


def groove_candidates(beats: tuple[GrooveBeat, ...], bpm: float, split: str,
                      rng: np.random.Generator) -> list[GrooveBeat]:
    """The Groove beats of the song's split within tolerance of its tempo, nearest first,
    the nearest few in a seeded order (so songs of one tempo do not all get one drummer)."""
    near = sorted((abs(math.log(g.bpm / bpm)), g.path, g) for g in beats if g.split == split)
    near = [g for d, _, g in near if d <= math.log(TEMPO_TOLERANCE)]
    head = near[:DRUM_CANDIDATES]
    return [head[i] for i in rng.permutation(len(head))] + near[DRUM_CANDIDATES:]


def pick_drums(beats: tuple[GrooveBeat, ...], bpm: float, split: str,
               rng: np.random.Generator) -> tuple[GrooveBeat | None, list[list[Note]]]:
    """The first candidate with at least MIN_GROOVE_BARS usable bars, and its bars."""
    for g in groove_candidates(beats, bpm, split, rng)[:MAX_GROOVE_TRIES]:
        try:
            bars = groove_bars(read_midi(g.path))
        except MuseBridgeError:
            continue  # an unreadable Groove file costs its song only that drummer
        if len(bars) >= MIN_GROOVE_BARS:
            return g, bars
    return None, []


def groove_bars(piece: Piece) -> list[list[Note]]:
    """A Groove performance cut at its bar lines: each bar's hits, times from its beat 1.

    The bar line's phase (the file may start on any beat) is the one that puts the most
    kicks on beat 1 and 3 and snares on 2 and 4; bars too thin to be a groove (fewer
    than 4 hits, or no kick nor snare) and the last bar (an ending) are dropped.
    """
    hits = [n for n in piece.notes if n.family == "drums"]
    if not hits:
        return []

    def score(phase: int) -> float:
        s = 0.0
        for n in hits:
            beat = round(n.start)
            if abs(n.start - beat) > 0.15:
                continue
            pos = (beat - phase) % 4
            if n.pitch in KICKS:
                s += 1.0 if pos == 0 else 0.5 if pos == 2 else 0.0
            elif n.pitch in SNARES:
                s += 1.0 if pos in (1, 3) else 0.0
        return s

    phase = max(range(4), key=lambda p: (score(p), -p))
    end = max(n.start for n in hits)
    bars = []
    start = phase
    while start <= end:
        bar = [Note(n.start - start, n.duration, n.pitch, n.velocity, n.family) for n in hits
               if start - EARLY <= n.start < start + 4 - EARLY]
        if len(bar) >= 4 and any(n.pitch in KICKS + SNARES for n in bar):
            bars.append(bar)
        start += 4
    return bars[:-1] if len(bars) > 2 else bars


def drum_part(bars: list[list[Note]], grid: Grid, active: np.ndarray, rng: np.random.Generator) -> list[Note]:
    """Groove bars laid on the song's bars (beat 1 on the downbeat), through the song,
    where something plays; a bar of n beats takes n beats of groove."""
    if not bars:
        return []
    first = int(rng.integers(len(bars)))
    out: list[Note] = []
    for i, (start, n) in enumerate(grid.bars()):
        if not active[start:start + n].any():
            continue
        taken, k = 0, 0
        while taken < n:
            bar = bars[(first + i + k) % len(bars)]
            span = min(4, n - taken)
            for h in bar:
                if h.start < span - EARLY:
                    t = max(start + taken + h.start, 0.0)
                    pitch = fold_into_range(h.pitch, FAMILY_BY_NAME["drums"])
                    if pitch is not None:
                        out.append(Note(t, min(h.duration, 1.0), pitch, h.velocity, "drums"))
            taken += span
            k += 1
    return out
