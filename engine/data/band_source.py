"""POP909 songs as band arrangements: lead, bridge, accompaniment, bass and drums.

POP909 gives each song three piano tracks (MELODY, BRIDGE, PIANO) and, beside it, beat
and chord annotations aligned to the MIDI (`beat_midi.txt`: seconds, half-bar flag,
downbeat flag; `chord_midi.txt`: start and end seconds, Harte label such as `C:maj/5`).
`read_band_song` turns one song into a band:

- the song is re-timed onto its annotated beats (beat j is beat j + offset, the first
  downbeat on a multiple of 4, tempo events per bar), so bars, beat phase and the new
  parts share one exact grid;
- the three tracks are voiced on band families chosen per song by an rng seeded from
  the song's id (`band_families`): the melody on a lead, the bridge on guitar, strings or
  a pad, the accompaniment on piano, organ or guitar, never two parts on one family;
- a bass follows the harmony (`bass_line`): the chord's bass note (its root, or the slash
  bass) on the beats, moving to the fifth or octave in one of a few per-song patterns,
  in the bass family's low register and under the accompaniment's lowest voice;
- drums come from a Groove MIDI beat performance (4/4, "beat" not "fill", a pop-like
  style, the nearest tempo, the same split as the song, at least MIN_GROOVE_BARS bars
  of groove): its bars are cut at its own bar
  lines and laid on the song's bars, so its beat 1 lands on the song's downbeat
  (hi-hat edge hits, keys 22 and 26, become GM hi-hats:
  `families.DRUM_KEY_ALIASES`); no Groove beat within
  `TEMPO_TOLERANCE` means no drums.

Missing or garbled annotations raise `DataError` (one line; the build counts the song
as skipped). Everything here is deterministic: the same files give the same piece.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from musebridge.errors import DataError, MuseBridgeError

from ..music.events import Note, Pedal, Piece, Tempo, TimeSignature, valid_time_signature
from ..music.families import FAMILY_BY_NAME, fold_into_range
from ..music.midi_file import _parse, read_midi

SOURCE = "pop909_band"  # collection name in keys and the manifest's "source"
SPEC_PREFIX = "pop909-band:"  # --source pop909-band:POP909_DIR[,GROOVE_DIR][=LABEL]
DEFAULT_LABEL = "pop"  # the shipped vocabulary's POP909 label: see `band_tasks`

LEAD_FAMILIES = ("synth_lead", "reed", "guitar", "brass")
BRIDGE_FAMILIES = ("guitar", "strings", "synth_pad")
ACCOMPANIMENT_FAMILIES = ("piano", "organ", "guitar")
TRACKS = ("MELODY", "BRIDGE", "PIANO")

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

_PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_DEGREE = {"1": 0, "2": 2, "3": 4, "4": 5, "5": 7, "6": 9, "7": 11, "9": 2, "11": 5, "13": 9}


# ---------------------------------------------------------------------------------------
# Annotations


@dataclass(frozen=True)
class Chord:
    """One chord span in seconds: its root and bass pitch classes (None for "N")."""

    start: float
    end: float
    root: int | None
    bass: int | None
    fifth: int  # semitones from the root to its fifth (6 for dim, 8 for aug)
    label: str


def read_beats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Beat times (seconds, increasing) and downbeat flags from a `beat_midi.txt`."""
    rows = _rows(path, "beat")
    times, down = [], []
    for i, row in enumerate(rows, 1):
        try:
            t, _, d = (float(x) for x in row[:3]) if len(row) >= 3 else (float("nan"),) * 3
        except ValueError:
            t = d = float("nan")
        if not (math.isfinite(t) and d in (0.0, 1.0)):
            got = " ".join(row)[:40]
            raise DataError(f"{path} line {i} is not 'seconds half-bar downbeat' (got {got!r}); "
                            "band arrangements need POP909's beat annotation")
        times.append(t)
        down.append(d == 1.0)
    beats = np.array(times)
    if len(beats) < 8 or np.any(np.diff(beats) <= 0):
        why = "fewer than 8 beats" if len(beats) < 8 else "beat times that go backwards"
        raise DataError(f"{path} has {why}; band arrangements need POP909's beat annotation")
    if sum(down) < 2:
        raise DataError(f"{path} marks fewer than 2 downbeats; band arrangements need bars")
    return beats, np.array(down)


def read_chords(path: Path) -> list[Chord]:
    """Chord spans from a `chord_midi.txt` (tab-separated start, end, Harte label)."""
    chords = []
    for i, row in enumerate(_rows(path, "chord"), 1):
        try:
            start, end = float(row[0]), float(row[1])
            chord = parse_chord(row[2], start, end) if len(row) == 3 else None
        except (ValueError, IndexError):
            chord = None
        if chord is None or not (math.isfinite(start) and math.isfinite(end)):
            raise DataError(f"{path} line {i} is not 'start end chord' (got {' '.join(row)[:40]!r}); "
                            "band arrangements need POP909's chord annotation")
        chords.append(chord)
    return chords


def parse_chord(label: str, start: float, end: float) -> Chord | None:
    """A Harte chord label ("N", "C#:min7", "Bb:maj/5", "G:7/b7"); None if unreadable."""
    if label == "N":
        return Chord(start, end, None, None, 7, label)
    root_text, sep, rest = label.partition(":")
    root = _pitch_class(root_text)
    quality, _, bass_text = rest.partition("/")
    if root is None or not sep or not quality:
        return None
    bass = root
    if bass_text:
        interval = _interval(bass_text)
        if interval is None:
            return None
        bass = (root + interval) % 12
    fifth = 6 if quality.startswith(("dim", "hdim")) else 8 if quality.startswith("aug") else 7
    return Chord(start, end, root, bass, fifth, label)


def _pitch_class(text: str) -> int | None:
    if not text or text[0] not in _PITCH_CLASS or any(c not in "#b" for c in text[1:]):
        return None
    return (_PITCH_CLASS[text[0]] + text.count("#") - text.count("b")) % 12


def _interval(text: str) -> int | None:
    degree = text.lstrip("#b")
    if degree not in _DEGREE:
        return None
    return _DEGREE[degree] + text.count("#") - text.count("b")


def _rows(path: Path, what: str) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path} is missing; band arrangements need POP909's {what} annotation beside "
                        "the song")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}); band arrangements need POP909's {what} "
                        "annotation") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path} is empty; band arrangements need POP909's {what} annotation")
    return rows


# ---------------------------------------------------------------------------------------
# The song's own parts, in seconds


@dataclass
class _Part:
    notes: list[tuple[float, float, int, int]]  # (start s, end s, pitch, velocity)
    pedals: list[tuple[float, bool]]


def read_parts(path: Path) -> dict[str, _Part]:
    """MELODY, BRIDGE and PIANO of a POP909 file, times in seconds through its tempo map."""
    mid = _parse(path)
    tpb = mid.ticks_per_beat
    if not isinstance(tpb, int) or tpb <= 0:
        raise DataError(f"{path} uses SMPTE or invalid timing; POP909 files count beats")
    tempo_changes: list[tuple[int, int]] = []
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo" and msg.tempo > 0:
                tempo_changes.append((tick, msg.tempo))
    seconds = _tick_clock(sorted(tempo_changes), tpb)
    parts: dict[str, _Part] = {}
    for track in mid.tracks:
        name = track.name.strip().upper()
        if name not in TRACKS:
            continue
        part = parts.setdefault(name, _Part([], []))
        tick = 0
        open_notes: dict[int, list[tuple[int, int]]] = {}
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                open_notes.setdefault(msg.note, []).append((tick, msg.velocity))
            elif msg.type in ("note_on", "note_off") and open_notes.get(msg.note):
                on, vel = open_notes[msg.note].pop(0)
                part.notes.append((seconds(on), seconds(tick), msg.note, vel))
            elif msg.type == "control_change" and msg.control == 64:
                part.pedals.append((seconds(tick), msg.value >= 64))
        for pitch, stack in open_notes.items():
            part.notes.extend((seconds(on), seconds(tick), pitch, vel) for on, vel in stack)
    if not any(p.notes for p in parts.values()):
        raise DataError(f"{path} has no notes on tracks named {', '.join(TRACKS)}; is it a POP909 song?")
    return parts


def _tick_clock(changes: list[tuple[int, int]], tpb: int):
    """Ticks -> seconds through (tick, microseconds per beat) changes (120 BPM before the first)."""
    ticks, secs, tempos = [0], [0.0], [500_000]
    for tick, tempo in changes:
        if tick == ticks[-1]:
            tempos[-1] = tempo
        else:
            secs.append(secs[-1] + (tick - ticks[-1]) * tempos[-1] / 1e6 / tpb)
            ticks.append(tick)
            tempos.append(tempo)

    def seconds(tick: int) -> float:
        i = int(np.searchsorted(ticks, tick, side="right")) - 1
        return secs[i] + (tick - ticks[i]) * tempos[i] / 1e6 / tpb

    return seconds


# ---------------------------------------------------------------------------------------
# The grid: annotated beats -> whole beats


@dataclass
class Grid:
    """The song's annotated beats as whole beats: beat j sounds at `beat_seconds[j]` and
    is beat `j + offset` of the arrangement; bars start at the downbeats."""

    beat_seconds: np.ndarray
    downbeats: np.ndarray  # indices into beat_seconds
    offset: int

    def to_beats(self, seconds: np.ndarray | float) -> np.ndarray:
        """Seconds -> arrangement beats, linear between annotated beats and beyond both ends."""
        s = self.beat_seconds
        x = np.asarray(seconds, dtype=float)
        j = np.interp(x, s, np.arange(len(s), dtype=float))
        j = np.where(x < s[0], (x - s[0]) / (s[1] - s[0]), j)
        j = np.where(x > s[-1], len(s) - 1 + (x - s[-1]) / (s[-1] - s[-2]), j)
        return j + self.offset

    def bars(self) -> list[tuple[int, int]]:
        """(first beat, beats in the bar) in arrangement beats, from the first downbeat on."""
        d = [int(i) for i in self.downbeats]
        ends = [*d[1:], min(d[-1] + 4, len(self.beat_seconds))]
        return [(a + self.offset, b - a) for a, b in zip(d, ends) if b > a]

    def tempos(self) -> list[Tempo]:
        """A tempo per bar (the lead-in at its first beats' tempo), written when it moves by 0.5 %
        (the tokenizer writes a token only when its tempo bin changes)."""
        s = self.beat_seconds
        out = [Tempo(0.0, float(60.0 / (s[1] - s[0])))]
        for d, n in self.bars():
            j = d - self.offset
            k = min(j + n, len(s) - 1)
            if k <= j:
                continue
            bpm = float(60.0 * (k - j) / (s[k] - s[j]))
            if abs(math.log(bpm / out[-1].bpm)) > math.log(1.005):
                out.append(Tempo(float(d), bpm))
        return out

    def time_signatures(self) -> list[TimeSignature]:
        """n/4 at the first bar and wherever the bar length changes (the last, cut by the
        annotation's end, does not count)."""
        out: list[TimeSignature] = []
        for i, (d, n) in enumerate(self.bars()[:-1] or self.bars()):
            if valid_time_signature(n, 4) and (not out or out[-1].numerator != n):
                out.append(TimeSignature(0.0 if i == 0 else float(d), n, 4))
        return out


def make_grid(beat_seconds: np.ndarray, down: np.ndarray, earliest: float) -> Grid:
    """The grid with the first downbeat on a multiple of 4 and nothing before beat 0.

    `earliest`: the first note's time in seconds (pickups may come before the downbeat).
    """
    downbeats = np.flatnonzero(down)
    grid = Grid(beat_seconds, downbeats, -int(downbeats[0]))
    first = float(grid.to_beats(earliest))
    grid.offset += 4 * math.ceil(max(-first, 0.0) / 4 - 1e-9)  # whole bars: the downbeat stays on 4k
    return grid


# ---------------------------------------------------------------------------------------
# Arrangement


def song_rng(song_id: str) -> np.random.Generator:
    """The one rng of a song's arrangement: seeded from its id, never from the path."""
    seed = int.from_bytes(hashlib.sha1(f"{SOURCE}/{song_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


def band_families(rng: np.random.Generator) -> dict[str, str]:
    """Track -> family: accompaniment, then bridge, then melody, each on a family of its own."""
    accompaniment = str(rng.choice(ACCOMPANIMENT_FAMILIES))
    bridge = str(rng.choice([f for f in BRIDGE_FAMILIES if f != accompaniment]))
    lead = str(rng.choice([f for f in LEAD_FAMILIES if f not in (accompaniment, bridge)]))
    return {"MELODY": lead, "BRIDGE": bridge, "PIANO": accompaniment}


def voice_part(part: _Part, family: str, grid: Grid, keep_pedal: bool,
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


# ---------------------------------------------------------------------------------------
# One song


def read_band_song(midi_path: str | Path, song_id: str, groove_folder: str | None, split: str,
                   style: str = DEFAULT_LABEL) -> Piece:
    """One POP909 song as a band arrangement (see the module's docstring)."""
    path = Path(midi_path)
    folder = path.parent
    beats, down = read_beats(folder / "beat_midi.txt")
    chords = read_chords(folder / "chord_midi.txt")
    parts = read_parts(path)
    earliest = min((n[0] for p in parts.values() for n in p.notes), default=float(beats[0]))
    grid = make_grid(beats, down, min(earliest, float(beats[0])))
    rng = song_rng(song_id)
    families = band_families(rng)
    notes: list[Note] = []
    pedals: list[Pedal] = []
    for track in TRACKS:
        if track not in parts:
            continue
        fam = families[track]
        ns, ps = voice_part(parts[track], fam, grid, keep_pedal=fam == "piano",
                            sustain=track != "MELODY" and fam != "piano")
        notes += ns
        pedals += ps
    length = math.ceil(max(n.end for n in notes)) + 1 if notes else 1
    length = max(length, len(beats) + grid.offset + 1)
    active = activity(notes, length)
    accompaniment = [n for n in notes if n.family == families["PIANO"]]
    notes += bass_line(chords, grid, accompaniment, active, rng)
    if groove_folder:
        bpm = float(60.0 / np.median(np.diff(beats)))
        _, bars = pick_drums(groove_index(str(groove_folder)), bpm, split, rng)
        notes += drum_part(bars, grid, active, rng)
    return Piece(notes=notes, pedals=pedals, tempos=grid.tempos(), time_signatures=grid.time_signatures(),
                 style=style, name=song_id).sorted()


def song_files(root: Path) -> list[Path]:
    """The songs under a POP909 folder: `NNN/NNN.mid` (versions/ folders left out)."""
    return sorted(p for p in root.rglob("*.mid")
                  if p.is_file() and "versions" not in (q.lower() for q in p.relative_to(root).parts[:-1]))


def find_groove(root: Path) -> Path | None:
    """The Groove folder beside a POP909 folder (the shared datasets' layout), if any."""
    for up in (root.parent, root.parent.parent):
        if (up / "groove" / "info.csv").is_file():
            return up / "groove"
    return None
