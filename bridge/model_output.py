"""The model's notes on their way out: family -> channel, each note's id from the moment it
is scheduled until it is released, and the roll told what was sent.

`ModelOutput` owns the `Scheduler`, whose `NoteTracker` knows by the same ids what sounds
now. Notes go in by `push` (events in timeline beats, from the jam's worker) and `replay`;
what the scheduler sends, `sent` writes into the `JamRecord`'s roll; `silence` and `cancel`
release through it, so the scheduler, its tracker and the roll always agree on what sounds.
"""

from __future__ import annotations

from typing import Callable, Iterable

from musebridge.engine.music.events import Event, Note, NoteOn
from musebridge.engine.music.families import FAMILIES
from musebridge.engine.music.midi_file import family_channels

from .jam_record import JamRecord
from .scheduler import Scheduled, Scheduler

REPLAY_TAG = -1  # scheduler tag of clips played again (an answer's cancel leaves them alone)


class ModelOutput:
    """The model's side of the output: `start` the scheduler, `push` notes, `stop`."""

    def __init__(self, record: JamRecord):
        self.record = record
        self.channels = family_channels([f.name for f in FAMILIES])  # family -> MIDI channel
        self._families = {c: f for f, c in self.channels.items()}
        self.scheduler: Scheduler | None = None
        self._open: dict[tuple[str, int], int] = {}  # (family, pitch) scheduled on, not yet off -> note id

    def programs(self) -> list[bytes]:
        """The program change that gives each pitched family's channel its GM instrument."""
        return [bytes([0xC0 | self.channels[f.name], f.program]) for f in FAMILIES if not f.is_drums]

    def family_of_channel(self, channel: int) -> str:
        return self._families.get(channel, "piano")

    def start(self, send: Callable[[bytes], None], time_at: Callable[[float], float], late_s: float, max_note_s: float,
              latency_s: float, on_sent: Callable[[Scheduled, float, float], None]) -> Scheduler:
        """A new scheduler (its thread started) sending through `send` at `time_at(timeline beat)`."""
        self._open.clear()
        self.scheduler = Scheduler(send, time_at, late_s=late_s, max_note_s=max_note_s, latency_s=latency_s,
                                   on_sent=on_sent)
        self.scheduler.start()
        return self.scheduler

    def stop(self, beat: float) -> None:
        """End the scheduler's thread, releasing everything (the roll's notes end at song `beat`)."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.record.end_open("model", beat)

    # --- notes in -----------------------------------------------------------------------------------
    def push(self, ev: Event, tag: int) -> int | None:
        """Schedule a model note-on or note-off (timeline beats) for answer `tag`; returns its
        note id, or None for a note-off of a note not scheduled (nothing to release)."""
        ch = self.channels[ev.family]
        key = (ev.family, ev.pitch)
        if isinstance(ev, NoteOn):  # a re-strike: the scheduler releases the old note first
            nid = self._open[key] = self.scheduler.new_note_id()
            self.scheduler.push(Scheduled(ev.time, 0, "on", ch, ev.pitch, ev.velocity, nid, tag))
            return nid
        nid = self._open.pop(key, None)
        if nid is not None:
            self.scheduler.push(Scheduled(ev.time, 0, "off", ch, ev.pitch, 0, nid, tag))
        return nid

    def replay(self, notes: Iterable[Note], start: float) -> None:
        """Play finished notes (beats from 0) again from timeline beat `start`, on the model's channels."""
        for n in notes:
            self.scheduler.note(start + n.start, start + max(n.end, n.start + 1 / 64), self.channels[n.family],
                                n.pitch, n.velocity, tag=REPLAY_TAG)

    def forget(self) -> None:
        """Nothing scheduled is to be released by a later note-off (cancelled, rewound)."""
        self._open.clear()

    # --- releasing ---------------------------------------------------------------------------------
    def silence(self, beat: float) -> None:
        """Release every sounding note now and drop everything pending (panic)."""
        if self.scheduler is not None:
            self.scheduler.panic()
            self.record.end_open("model", beat)

    def cancel(self, tag: int, beat: float) -> None:
        """Drop answer `tag`'s pending notes and release what of it sounds."""
        if self.scheduler is not None:
            self.scheduler.cancel(tag=tag)
            self.record.end_open("model", beat)

    # --- what went out (the scheduler's thread) -------------------------------------------------------
    def sent(self, it: Scheduled, beat: float) -> None:
        """The scheduler sent `it` at song `beat`: into the roll."""
        self.record.note("model", self.family_of_channel(it.channel), it.pitch, beat, it.kind == "on", it.velocity)
