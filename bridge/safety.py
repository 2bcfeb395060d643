"""Note safety: nothing we start keeps sounding, nothing malformed gets in, our own notes
coming back through a loopback are not mistaken for the player's.

- `NoteTracker` knows every note we sent that has not been released, so panic and
  shutdown release exactly those (individual note-offs first: some synths ignore
  CC123), and a max-note-length guard can end a note whose note-off was lost.
- `sanitize` checks incoming messages before anything interprets them: a bad byte from
  a flaky driver or a hardware port must be dropped and counted, never raised.
- `EchoGuard` remembers what we just sent, because DAWs often route the bridge's output
  back to its input (record-armed track with input monitoring).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, fields

NOTE_OFF, NOTE_ON, CC = 0x80, 0x90, 0xB0
CC_SUSTAIN, CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF = 64, 120, 123

# Length of each message by status byte (channel messages by their high nibble).
_CHANNEL_LEN = {0x80: 3, 0x90: 3, 0xA0: 3, 0xB0: 3, 0xC0: 2, 0xD0: 2, 0xE0: 3}
_SYSTEM_LEN = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFE: 1, 0xFF: 1}


def note_key(msg: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(channel, pitch, is_on) for a note-on/off message, else None. Velocity 0 is an off."""
    if len(msg) < 3:
        return None
    kind = msg[0] & 0xF0
    if kind == NOTE_ON:
        return msg[0] & 0x0F, msg[1], msg[2] > 0
    if kind == NOTE_OFF:
        return msg[0] & 0x0F, msg[1], False
    return None


# --- outgoing notes -------------------------------------------------------------------------


@dataclass(frozen=True)
class SoundingNote:
    channel: int
    pitch: int
    note_id: int
    start: float  # perf_counter time the note-on was sent


class NoteTracker:
    """Every note-on sent and not yet matched by a note-off.

    A key struck twice without a release counts twice (a note-off ends the oldest), so a
    synth that stacks voices gets one note-off per voice. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: dict[tuple[int, int], deque[SoundingNote]] = {}
        self._ids = itertools.count()
        self.channels_used: set[int] = set()

    def note_on(self, channel: int, pitch: int, t: float | None = None, note_id: int | None = None) -> int:
        """Record a note-on we sent; returns its id."""
        nid = next(self._ids) if note_id is None else note_id
        note = SoundingNote(channel, pitch, nid, time.perf_counter() if t is None else t)
        with self._lock:
            self._notes.setdefault((channel, pitch), deque()).append(note)
            self.channels_used.add(channel)
        return nid

    def note_off(self, channel: int, pitch: int) -> SoundingNote | None:
        """Record a note-off we sent; returns the note it ended (None if none sounded)."""
        with self._lock:
            q = self._notes.get((channel, pitch))
            if not q:
                return None
            note = q.popleft()
            if not q:
                del self._notes[(channel, pitch)]
            return note

    def observe(self, msg: bytes | bytearray, t: float | None = None) -> None:
        """Record any raw message we sent: notes, and CC120/123 (which silence a channel)."""
        key = note_key(msg)
        if key is not None:
            ch, pitch, on = key
            if on:
                self.note_on(ch, pitch, t)
            else:
                self.note_off(ch, pitch)
        elif len(msg) >= 3 and msg[0] & 0xF0 == CC and msg[1] in (CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF):
            ch = msg[0] & 0x0F
            with self._lock:
                for k in [k for k in self._notes if k[0] == ch]:
                    del self._notes[k]
            self.channels_used.add(ch)

    def sounding(self) -> list[SoundingNote]:
        """The notes sounding now, oldest first."""
        with self._lock:
            notes = [n for q in self._notes.values() for n in q]
        return sorted(notes, key=lambda n: n.start)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._notes.values())

    def expired(self, now: float, max_len_s: float) -> list[tuple[int, int]]:
        """(channel, pitch) of each note held longer than `max_len_s` (one entry per voice).

        Does not release them: the caller sends the note-off and then calls `note_off`.
        """
        limit = now - max_len_s
        with self._lock:
            return [(n.channel, n.pitch) for q in self._notes.values() for n in q if n.start <= limit]

    def release_all(self) -> list[bytes]:
        """Messages that silence everything we started, and forget it all.

        A note-off for every sounding voice, then sustain off (CC64=0) and all notes off
        (CC123=0) on every channel we ever used -- the CCs catch what a synth holds that
        we do not know about (a pedal, a voice whose note-off got lost on the way).
        """
        with self._lock:
            notes = sorted((n for q in self._notes.values() for n in q), key=lambda n: n.start)
            self._notes.clear()
            channels = sorted(self.channels_used)
        msgs = [bytes([NOTE_OFF | n.channel, n.pitch, 0]) for n in notes]
        for ch in channels:
            msgs.append(bytes([CC | ch, CC_SUSTAIN, 0]))
            msgs.append(bytes([CC | ch, CC_ALL_NOTES_OFF, 0]))
        return msgs


# --- incoming messages ---------------------------------------------------------------------------


@dataclass
class DropCounters:
    """How many incoming messages were dropped, by reason (shown in stats, never raised)."""

    empty: int = 0
    sysex: int = 0
    no_status: int = 0  # starts with a data byte: running status or a torn message
    undefined: int = 0  # 0xF4, 0xF5, 0xF9, 0xFD, or a stray 0xF7
    length: int = 0
    data_byte: int = 0  # a byte >= 0x80 where a data byte (0..127) belongs

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def sanitize(msg: bytes | bytearray | list[int], counters: DropCounters | None = None) -> bytes | None:
    """The message as bytes if it is one complete, well-formed non-sysex message, else None.

    Never raises on any input; counts the reason for a drop in `counters`.
    """
    reason = _problem(msg)
    if reason is None:
        return bytes(msg)
    if counters is not None:
        setattr(counters, reason, getattr(counters, reason) + 1)
    return None


def _problem(msg: bytes | bytearray | list[int]) -> str | None:
    try:
        if not msg:
            return "empty"
        status = msg[0]
        if not isinstance(status, int) or not 0 <= status <= 0xFF:
            return "data_byte"
        if status < 0x80:
            return "no_status"
        if status == 0xF0:
            return "sysex"
        want = _CHANNEL_LEN.get(status & 0xF0) if status < 0xF0 else _SYSTEM_LEN.get(status)
        if want is None:
            return "undefined"
        if len(msg) != want:
            return "length"
        for b in msg[1:]:
            if not isinstance(b, int) or not 0 <= b < 0x80:
                return "data_byte"
        return None
    except Exception:  # an odd object: treat like a torn message, never raise
        return "data_byte"


# --- loopback echoes ---------------------------------------------------------------------------------


class EchoGuard:
    """Recognises our own notes coming back within `window_s` of sending them.

    Each sent note-on/off may excuse one identical (channel, pitch, on/off) arrival, but
    only while there is a loop: `loop` follows how many of our notes came back (a moving
    average, starting at 1 so a loop is caught from the first note). Without one, our
    notes stop coming back, `loop` falls below `LOOP_ON` after a handful of notes, and a
    player who doubles the model's note within the window is heard, not swallowed.
    Thread-safe: `sent` runs in the output thread, `is_echo` in the input callback.
    """

    LOOP_ON = 0.3

    def __init__(self, window_s: float = 0.05):
        self.window_s = window_s
        self.loop = 1.0
        self._lock = threading.Lock()
        self._sent: deque[tuple[float, tuple[int, int, bool]]] = deque()

    def sent(self, msg: bytes | bytearray, t: float | None = None) -> None:
        key = note_key(msg)
        if key is None:
            return
        now = time.perf_counter() if t is None else t
        with self._lock:
            self._expire(now)
            self._sent.append((now, key))

    def is_echo(self, msg: bytes | bytearray, t: float | None = None) -> bool:
        """True (and the match is used up) if `msg` is a note we sent within the window."""
        key = note_key(msg)
        if key is None:
            return False
        now = time.perf_counter() if t is None else t
        with self._lock:
            self._expire(now)
            for i, (_, k) in enumerate(self._sent):
                if k == key:
                    del self._sent[i]
                    looping = self.loop >= self.LOOP_ON
                    self.loop = 0.75 * self.loop + 0.25  # it came back
                    return looping
        return False

    def _expire(self, now: float) -> None:
        while self._sent and now - self._sent[0][0] > self.window_s:
            self._sent.popleft()
            self.loop *= 0.75  # a note of ours that did not come back
