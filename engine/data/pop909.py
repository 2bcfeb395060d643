"""POP909's own files: the beat and chord annotations beside each song, its three tracks, and
the grid that re-times a song onto its annotated beats.

`beat_midi.txt`: seconds, half-bar flag, downbeat flag per beat; `chord_midi.txt`: start and
end seconds and a Harte label such as `C:maj/5`; the MIDI file: MELODY, BRIDGE and PIANO
tracks. `Grid` maps seconds onto whole beats (beat j of the annotation is beat j + offset,
the first downbeat on a multiple of 4) and gives the tempo and meter events that play the
grid back. Missing or garbled annotations raise `DataError` in one line. The band built on
them: `band_parts.py`, `band_source.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musebridge.errors import DataError

from ..music.events import Tempo, TimeSignature, valid_time_signature
from ..music.midi_file import _parse

TRACKS = ("MELODY", "BRIDGE", "PIANO")

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
class Part:
    notes: list[tuple[float, float, int, int]]  # (start s, end s, pitch, velocity)
    pedals: list[tuple[float, bool]]


def read_parts(path: Path) -> dict[str, Part]:
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
    parts: dict[str, Part] = {}
    for track in mid.tracks:
        name = track.name.strip().upper()
        if name not in TRACKS:
            continue
        part = parts.setdefault(name, Part([], []))
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



def song_files(root: Path) -> list[Path]:
    """The songs under a POP909 folder: `NNN/NNN.mid` (versions/ folders left out)."""
    return sorted(p for p in root.rglob("*.mid")
                  if p.is_file() and "versions" not in (q.lower() for q in p.relative_to(root).parts[:-1]))
