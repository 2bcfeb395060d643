"""Timed musical events: the one shape every reader produces and every writer takes.

Times are in beats (quarter notes) from the start of the piece, as floats; seconds come
from the tempo map (`Piece.seconds_at`). Readers (MIDI files, the music21 corpus, live
ports) build a `Piece`; the tokenizer turns its event stream into tokens and back.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterator, Union

from .families import FAMILY_INDEX

DEFAULT_BPM = 120.0

# A rest longer than this is just "a long rest": readers and the encoder cut longer
# silences down to it, by whole 4-beat cycles so the beat and a 4/4 bar keep their phase.
# Without it, one legal MIDI delta (up to 2**28 - 1 ticks) is millions of wait tokens.
MAX_REST_BEATS = 16
REST_CYCLE_BEATS = 4

# Time signatures a reader keeps: MIDI can say 0/4 or 4/2**255; neither is a bar.
MAX_TIMESIG_NUMERATOR = 32
MAX_TIMESIG_DENOMINATOR = 64


def cut_rest(gap: int, cap: int, cycle: int) -> int:
    """`gap` (ticks) if at most `cap`, else shortened by whole `cycle`s to at most `cap`.

    One rule for every clock (file ticks, grid ticks): the rest stays long, keeps its
    phase modulo `cycle`, and costs O(1) however long it was.
    """
    if gap <= cap:
        return gap
    return gap - -(-(gap - cap) // cycle) * cycle


def valid_time_signature(numerator: int, denominator: int) -> bool:
    """A bar that can be counted: 1..32 beats of a power-of-two note value 1..64."""
    return (1 <= numerator <= MAX_TIMESIG_NUMERATOR and 1 <= denominator <= MAX_TIMESIG_DENOMINATOR
            and denominator & (denominator - 1) == 0)


@dataclass(frozen=True, slots=True)
class Note:
    """A sounding note: onset and length in beats, MIDI pitch and velocity (1-127)."""

    start: float
    duration: float
    pitch: int
    velocity: int
    family: str

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Pedal:
    """Sustain pedal (CC64) pressed or released for one family."""

    time: float  # beats
    family: str
    down: bool  # pressed (True) or released


@dataclass(frozen=True, slots=True)
class Tempo:
    """A tempo change, in quarter-note beats per minute."""

    time: float  # beats
    bpm: float


@dataclass(frozen=True, slots=True)
class TimeSignature:
    """A time-signature change (numerator / denominator)."""

    time: float  # beats
    numerator: int  # beats in a bar
    denominator: int  # the note value of a beat: 4 a quarter, 8 an eighth


# The event stream: what the tokenizer reads and writes, in time order.
@dataclass(frozen=True, slots=True)
class NoteOn:
    time: float
    family: str
    pitch: int
    velocity: int


@dataclass(frozen=True, slots=True)
class NoteOff:
    time: float
    family: str
    pitch: int


Event = Union[NoteOn, NoteOff, Pedal, Tempo, TimeSignature]

# Within one instant: releases first (so a re-struck key is released before it sounds
# again), then meta, then pedal, then onsets -- one canonical order for every reader.
_KIND_ORDER = {NoteOff: 0, Tempo: 1, TimeSignature: 2, Pedal: 3, NoteOn: 4}


def event_sort_key(event: Event) -> tuple:
    """Canonical order of events: by time, kind, family, then pitch."""
    kind = _KIND_ORDER[type(event)]
    family = FAMILY_INDEX.get(getattr(event, "family", ""), -1)
    return (event.time, kind, family, getattr(event, "pitch", 0))


@dataclass
class Piece:
    """A whole piece: notes, pedals, tempo map and time signatures, with its labels."""

    notes: list[Note] = field(default_factory=list)
    pedals: list[Pedal] = field(default_factory=list)
    tempos: list[Tempo] = field(default_factory=list)
    time_signatures: list[TimeSignature] = field(default_factory=list)
    style: str | None = None
    name: str = ""

    @property
    def families(self) -> list[str]:
        """Families that play at least one note, in vocabulary order."""
        present = {n.family for n in self.notes}
        return sorted(present, key=FAMILY_INDEX.__getitem__)

    @property
    def end(self) -> float:
        """Time in beats when the last note stops."""
        return max((n.end for n in self.notes), default=0.0)

    def events(self) -> list[Event]:
        """Every event in canonical time order (note-ons and note-offs split apart)."""
        keyed: list[tuple[tuple, Event]] = []
        for n in self.notes:
            on = NoteOn(n.start, n.family, n.pitch, n.velocity)
            off = NoteOff(max(n.end, n.start), n.family, n.pitch)
            keyed.append((event_sort_key(on), on))
            # A zero-length note's release must follow its own onset, not precede it.
            k = event_sort_key(off)
            keyed.append(((k[0], 5, *k[2:]) if n.end <= n.start else k, off))
        for ev in (*self.pedals, *self.tempos, *self.time_signatures):
            keyed.append((event_sort_key(ev), ev))
        keyed.sort(key=lambda x: x[0])
        return [ev for _, ev in keyed]

    def tempo_map(self) -> "TempoMap":
        return TempoMap(self.tempos)

    def sorted(self) -> "Piece":
        """A copy with every list in time order (readers may fill them in any order)."""
        return Piece(
            notes=sorted(self.notes, key=lambda n: (n.start, FAMILY_INDEX[n.family], n.pitch)),
            pedals=sorted(self.pedals, key=lambda p: p.time),
            tempos=sorted(self.tempos, key=lambda t: t.time),
            time_signatures=sorted(self.time_signatures, key=lambda t: t.time),
            style=self.style,
            name=self.name,
        )


class TempoMap:
    """Beats <-> seconds through a list of tempo changes (120 BPM before the first)."""

    def __init__(self, tempos: list[Tempo]):
        changes = sorted(tempos, key=lambda t: t.time)
        self.beats: list[float] = [0.0]
        self.bpms: list[float] = [changes[0].bpm if changes and changes[0].time <= 0 else DEFAULT_BPM]
        for t in changes:
            if t.time <= 0:
                self.bpms[0] = t.bpm
            elif t.time == self.beats[-1]:
                self.bpms[-1] = t.bpm
            else:
                self.beats.append(t.time)
                self.bpms.append(t.bpm)
        self.seconds: list[float] = [0.0]
        for i in range(1, len(self.beats)):
            span = self.beats[i] - self.beats[i - 1]
            self.seconds.append(self.seconds[-1] + span * 60.0 / self.bpms[i - 1])

    def to_seconds(self, beat: float) -> float:
        i = bisect.bisect_right(self.beats, beat) - 1
        i = max(i, 0)
        return self.seconds[i] + (beat - self.beats[i]) * 60.0 / self.bpms[i]

    def to_beats(self, second: float) -> float:
        i = bisect.bisect_right(self.seconds, second) - 1
        i = max(i, 0)
        return self.beats[i] + (second - self.seconds[i]) * self.bpms[i] / 60.0

    def bpm_at(self, beat: float) -> float:
        i = max(bisect.bisect_right(self.beats, beat) - 1, 0)
        return self.bpms[i]


def iter_notes(events: list[Event]) -> Iterator[Note]:
    """Pair note-ons with note-offs (first on, first off per family and pitch).

    Notes still sounding at the end are closed at the last event's time, so a decoded
    stream never leaves a note hanging.
    """
    open_notes: dict[tuple[str, int], list[NoteOn]] = {}
    last = 0.0
    for ev in events:
        last = max(last, ev.time)
        if isinstance(ev, NoteOn):
            open_notes.setdefault((ev.family, ev.pitch), []).append(ev)
        elif isinstance(ev, NoteOff):
            stack = open_notes.get((ev.family, ev.pitch))
            if stack:
                on = stack.pop(0)
                yield Note(on.time, ev.time - on.time, on.pitch, on.velocity, on.family)
    for stack in open_notes.values():
        for on in stack:
            yield Note(on.time, max(last - on.time, 0.0), on.pitch, on.velocity, on.family)
