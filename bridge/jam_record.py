"""The jam as it happened: what the app shows and `jam --save` keeps, with no port and no model.

`JamRecord` holds
- the roll: recent notes in song beats, the player's and the model's (`RollNote`), those
  still sounding open (`off` is None);
- the answers (`AnswerRecord`), newest last: what each played, with the settings that made
  it and, for a best-of-N answer, how it was chosen;
- the latencies (phrase end -> first token, -> first note out) and the generation speed
  (tokens per second, seconds of music per second of compute), the last 500 of each.

The jam session writes it as the jam runs (the player's notes from its worker, the
model's as the scheduler sends them); the app's demo writes it the same way. Readers (the
app's frame tick, `--save`) get copies, from any thread.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from musebridge.engine.music.events import Event, NoteOff, NoteOn

ROLL_NOTES = 2000  # the roll keeps this many recent notes
KEEP_ANSWERS = 200  # past this many answers, the oldest 100 are let go
FIGURES = 500  # latencies and speeds kept, each


@dataclass(slots=True)
class RollNote:
    """One note in the roll, in song beats: the player's (src "user") or the model's."""

    src: str  # "user" | "model"
    family: str
    pitch: int
    on: float
    off: float | None = None  # None: sounding
    velocity: int = 0

    def copy(self) -> "RollNote":
        return RollNote(self.src, self.family, self.pitch, self.on, self.off, self.velocity)


@dataclass
class AnswerRecord:
    """One finished answer: its events (timeline beats) from `start` (the song beat it began
    on), the settings that made it, and for best of N how it was chosen. A cancelled one
    holds what of it sounded."""

    tag: int
    start: float
    bars: float = 2.0
    bpm: float = 120.0
    events: list[Event] = field(default_factory=list)
    controls: dict = field(default_factory=dict)  # SamplingControls.to_dict()
    style: str | None = None
    cancelled: bool = False
    candidates: int | None = None  # best of N: how many were made
    score_by: str | None = None  # "critic" | "likelihood"
    score: float | None = None  # the winner's score

    def end(self, beats_per_bar: float) -> float:
        """The song beat the answer's span ends on."""
        return self.start + self.bars * beats_per_bar


@dataclass
class LiveAnswer:
    """The answer being played: its span in timeline beats, and its model notes as they
    were scheduled (`events`, each with its scheduler note id in `ids`) and sent (`sent`,
    `first`: written by the scheduler's thread through its tracker, `NoteTracker.watch`)."""

    tag: int
    start: float
    end: float
    phrase_end_t: float  # when the phrase it answers ended (perf_counter)
    controls: dict  # SamplingControls.to_dict() it is made with
    events: list[Event] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)  # ids whose note-on went out
    first: tuple[float, float] | None = None  # (due, sent) perf_counter times of its first note-on
    announced: bool = False  # its answer_start said
    ranking: dict = field(default_factory=dict)  # best of N: candidates, score_by, score
    speculated: int = 0  # its tokens sampled ahead in the phrase-ending silence (bridge/speculation.py)

    def add(self, ev: Event, note_id: int) -> None:
        self.events.append(ev)
        self.ids.append(note_id)

    def cut(self, beat: float) -> None:
        """It stops at `beat` (the player barged in): what comes later is not part of it."""
        self.events = [e for e in self.events if e.time <= beat]
        self.end = beat

    def played_part(self, cut: float) -> list[Event]:
        """What of it sounded: the notes whose note-on went out, each ended by `cut`, the
        timeline beat it was cancelled on (the cancel released it there)."""
        out: list[Event] = []
        sounding: dict[int, NoteOn] = {}
        for ev, nid in zip(self.events, self.ids):
            if nid not in self.sent:
                continue
            if isinstance(ev, NoteOn):
                sounding[nid] = ev
                out.append(ev)
            elif sounding.pop(nid, None) is not None:
                out.append(ev if ev.time <= cut else NoteOff(cut, ev.family, ev.pitch))
        for on in sounding.values():
            out.append(NoteOff(max(cut, on.time), on.family, on.pitch))
        return sorted(out, key=lambda e: e.time)


def percentiles(values: Iterable[float]) -> dict:
    """p50 and p99 (rounded to 0.001) and how many, of a series of figures."""
    a = np.array(list(values), float)
    if not a.size:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3), "n": len(a)}


class JamRecord:
    """The roll, the answers and the figures of one jam (or of the app's demo)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roll: deque[RollNote] = deque(maxlen=ROLL_NOTES)
        # (src, family, pitch) -> its sounding note, for notes written by key (`note`: the player's,
        # the demo's); the jam's model notes are opened and ended by the scheduler's NoteTracker
        self._open: dict[tuple[str, str, int], RollNote] = {}
        self._answers: list[AnswerRecord] = []
        self.completed = 0  # answers played to their end (not cancelled)
        self.first_token_ms: deque[float] = deque(maxlen=FIGURES)  # phrase end -> first token sampled
        self.phrase_to_note_ms: deque[float] = deque(maxlen=FIGURES)  # phrase end -> first note sent
        self.tokens_per_s: deque[float] = deque(maxlen=FIGURES)
        self.realtime_x: deque[float] = deque(maxlen=FIGURES)  # seconds of music per second of compute

    # --- the roll ---------------------------------------------------------------------------------
    def note(self, src: str, family: str, pitch: int, beat: float, on: bool, velocity: int = 0) -> None:
        """A note of `src` starts (`on`) or ends at song beat `beat`; a re-struck key ends
        the note it was sounding first."""
        key = (src, family, pitch)
        with self._lock:
            if key in self._open:
                self._open.pop(key).off = beat
            if on:
                self._open[key] = self._append(src, family, pitch, beat, velocity)

    def _append(self, src: str, family: str, pitch: int, beat: float, velocity: int) -> RollNote:
        note = RollNote(src, family, pitch, beat, None, velocity)
        self._roll.append(note)
        return note

    def open_note(self, src: str, family: str, pitch: int, beat: float, velocity: int = 0) -> RollNote:
        """A note starts at song beat `beat`, sounding until `close_note` ends it (its owner,
        e.g. the scheduler's tracker, holds it: no key here)."""
        with self._lock:
            return self._append(src, family, pitch, beat, velocity)

    def close_note(self, note: RollNote, beat: float) -> None:
        """`note` (from `open_note`) ends at song beat `beat`, unless it ended already."""
        with self._lock:
            if note.off is None:
                note.off = beat

    def end_open(self, src: str, beat: float) -> None:
        """Every note of `src` written by key (`note`) still sounding ends at `beat` (the app's
        demo, at its end; the jam's model notes end through the scheduler's tracker)."""
        with self._lock:
            for key in [k for k in self._open if k[0] == src]:
                note = self._open.pop(key)
                if note.off is None:
                    note.off = beat

    def add_notes(self, notes: Iterable[RollNote]) -> None:
        """Notes as they are (finished, or open with off=None), e.g. a demo's."""
        with self._lock:
            self._roll.extend(n.copy() for n in notes)

    def roll_snapshot(self, since_beat: float = -math.inf) -> list[RollNote]:
        """Copies of the notes that end after `since_beat` (sounding ones have off=None)."""
        with self._lock:
            return [n.copy() for n in self._roll if n.off is None or n.off >= since_beat]

    # --- answers ----------------------------------------------------------------------------------
    def add_answer(self, rec: AnswerRecord) -> None:
        with self._lock:
            self._answers.append(rec)
            if len(self._answers) > KEEP_ANSWERS:
                del self._answers[:KEEP_ANSWERS // 2]
            self.completed += not rec.cancelled

    def answers(self) -> list[AnswerRecord]:
        """The answers kept, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._answers)

    def answer(self, tag: int) -> AnswerRecord | None:
        """The latest answer with this tag, if still kept."""
        with self._lock:
            return next((a for a in reversed(self._answers) if a.tag == tag), None)

    # --- figures ----------------------------------------------------------------------------------
    def generated(self, tokens: int, seconds: float, music_s: float) -> None:
        """`tokens` sampled in `seconds` of compute for `music_s` seconds of music."""
        self.tokens_per_s.append(tokens / seconds)
        self.realtime_x.append(music_s / seconds)

    def figures_seen(self) -> int:
        """How many first-token and speed figures came so far (changes when there are new ones)."""
        return len(self.first_token_ms) + len(self.tokens_per_s)

    def stats(self) -> dict:
        """Percentiles of the latencies and speeds (the `stopped` event carries them)."""
        return {"latency": {"first_token_ms": percentiles(self.first_token_ms),
                            "phrase_to_note_ms": percentiles(self.phrase_to_note_ms)},
                "throughput": {"tokens_per_s": percentiles(self.tokens_per_s),
                               "realtime_x": percentiles(self.realtime_x)}}
