"""The model's notes on their way out: family -> channel, and the `Scheduler` that sends them.

One owner knows each model note, by one id, from the moment it is scheduled until it is
released: the scheduler's `NoteTracker`. Notes go in by `push` (events in timeline beats,
from the jam's worker; the tracker names the id a later note-off releases) and `replay`;
`silence` and `cancel` release through the scheduler. The roll reads the same notes: this
object is the tracker's `RollWriter`, so a note opens in the `JamRecord`'s roll when it is
sent and ends there whenever the tracker lets it go (note-off, cancel, panic, the guard).
"""

from __future__ import annotations

from typing import Callable, Iterable

from musebridge.engine.music.events import Event, Note, NoteOn
from musebridge.engine.music.families import FAMILIES
from musebridge.engine.music.midi_file import family_channels

from .jam_record import JamRecord, RollNote
from .safety import Watched
from .scheduler import Scheduled, Scheduler

REPLAY_TAG = -1  # scheduler tag of clips played again (an answer's cancel leaves them alone)


class ModelOutput:
    """The model's side of the output: `start` the scheduler, `push` notes, `stop`."""

    def __init__(self, record: JamRecord):
        self.record = record
        self.channels = family_channels([f.name for f in FAMILIES])  # family -> MIDI channel
        self._families = {c: f for f, c in self.channels.items()}
        self.scheduler: Scheduler | None = None
        self._beat_at: Callable[[float], float] = lambda t: 0.0  # perf_counter time -> song beat

    def programs(self) -> list[bytes]:
        """The program change that gives each pitched family's channel its GM instrument."""
        return [bytes([0xC0 | self.channels[f.name], f.program]) for f in FAMILIES if not f.is_drums]

    def family_of_channel(self, channel: int) -> str:
        return self._families.get(channel, "piano")

    def start(self, send: Callable[[bytes], None], time_at: Callable[[float], float], beat_at: Callable[[float], float],
              late_s: float, max_note_s: float, latency_s: float) -> Scheduler:
        """A new scheduler (its thread started) sending through `send` at `time_at(timeline beat)`;
        the roll's notes are at `beat_at(perf_counter time)`, song beats."""
        self._beat_at = beat_at
        self.scheduler = Scheduler(send, time_at, late_s=late_s, max_note_s=max_note_s, latency_s=latency_s,
                                   roll=self)
        self.scheduler.start()
        return self.scheduler

    def stop(self) -> None:
        """End the scheduler's thread, releasing everything."""
        if self.scheduler is not None:
            self.scheduler.stop()

    # --- notes in -----------------------------------------------------------------------------------
    def push(self, ev: Event, tag: int) -> int | None:
        """Schedule a model note-on or note-off (timeline beats) for answer `tag`; returns its
        note id, or None for a note-off of a note not scheduled (nothing to release)."""
        ch = self.channels[ev.family]
        key, notes = (ev.family, ev.pitch), self.scheduler.tracker
        if isinstance(ev, NoteOn):  # a re-strike: the scheduler releases the old note first
            nid = self.scheduler.new_note_id()
            notes.schedule(key, nid)
            self.scheduler.push(Scheduled(ev.time, 0, "on", ch, ev.pitch, ev.velocity, nid, tag))
            return nid
        nid = notes.scheduled(key)
        if nid is not None:
            self.scheduler.push(Scheduled(ev.time, 0, "off", ch, ev.pitch, 0, nid, tag))
        return nid

    def replay(self, notes: Iterable[Note], start: float) -> None:
        """Play finished notes (beats from 0) again from timeline beat `start`, on the model's channels."""
        for n in notes:
            self.scheduler.note(start + n.start, start + max(n.end, n.start + 1 / 64), self.channels[n.family],
                                n.pitch, n.velocity, tag=REPLAY_TAG)

    def watch(self, answer: Watched | None) -> None:
        """`answer`'s note-ons are written into it as they go out (the tracker's `watch`)."""
        if self.scheduler is not None:
            self.scheduler.tracker.watch(answer)

    def forget(self) -> None:
        """Nothing scheduled is to be released by a later note-off (cancelled, rewound)."""
        if self.scheduler is not None:
            self.scheduler.tracker.forget_scheduled()

    # --- releasing ---------------------------------------------------------------------------------
    def silence(self) -> None:
        """Release every sounding note now and drop everything pending (panic)."""
        if self.scheduler is not None:
            self.scheduler.panic()

    def cancel(self, tag: int) -> None:
        """Drop answer `tag`'s pending notes and release what of it sounds."""
        if self.scheduler is not None:
            self.scheduler.cancel(tag=tag)

    # --- the roll (the tracker's RollWriter: the scheduler's thread, or whoever releases) -----------
    def opened(self, channel: int, pitch: int, velocity: int, t: float) -> RollNote:
        return self.record.open_note("model", self.family_of_channel(channel), pitch, self._beat_at(t), velocity)

    def closed(self, note: RollNote, t: float) -> None:
        self.record.close_note(note, self._beat_at(t))
