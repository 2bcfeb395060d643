"""Note safety: nothing we start keeps sounding, nothing malformed gets in, our own notes
coming back through a loopback are not mistaken for the player's.

- `NoteTracker` is the one owner of the model's notes on their way out: each by one id
  from the moment it is scheduled, through sent, until released (by its note-off, a
  re-strike, a cancel, panic or the max-note-length guard). Panic and shutdown release
  exactly what sounds (individual note-offs first: some synths ignore CC123), and the
  roll's notes open and end with the tracker's (`RollWriter`), never kept apart.
- `MidiParser` reads incoming bytes as a stream by MIDI's rules before anything interprets
  them: a torn or glued message from a flaky driver or a hardware port must cost only
  itself -- dropped and counted, never raised, and the next message always heard.
- `EchoGuard` remembers what we just sent, because DAWs often route the bridge's output
  back to its input (record-armed track with input monitoring).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Hashable, Iterable, Protocol

NOTE_OFF, NOTE_ON, CC = 0x80, 0x90, 0xB0
CC_SUSTAIN, CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF = 64, 120, 123

# Length of each channel message by the high nibble of its status byte.
_CHANNEL_LEN = {0x80: 3, 0x90: 3, 0xA0: 3, 0xB0: 3, 0xC0: 2, 0xD0: 2, 0xE0: 3}


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


@dataclass(eq=False)
class SoundingNote:
    channel: int
    pitch: int
    note_id: int
    start: float  # perf_counter time the note-on was sent
    roll: object = None  # its note in the roll (`RollWriter.opened`), ended with it


class RollWriter(Protocol):
    """Where the tracker's notes show (the jam record's roll): each note opens when sent
    and ends when released, at perf_counter time `t`."""

    def opened(self, channel: int, pitch: int, velocity: int, t: float) -> object: ...

    def closed(self, note: object, t: float) -> None: ...


class Watched(Protocol):
    """An answer whose note-ons the tracker notes as they go out (`jam_record.LiveAnswer`)."""

    tag: int
    sent: set[int]  # ids whose note-on went out
    first: tuple[float, float] | None  # (due, sent) perf_counter times of its first note-on


class NoteTracker:
    """The model's notes from scheduled to released, by one id: what sounds now.

    `schedule(key, id)` names the note a later note-off of `key` (the model's family and
    pitch) releases; `note_on` records it sent, `end`/`note_off` released. A key struck
    twice without a release counts twice (a note-off ends the oldest), so a synth that
    stacks voices gets one note-off per voice. Each note has an id: the caller's (the
    scheduler's note ids), else the tracker's own. With a `roll`, every note sent opens
    there and every release, however it comes, ends it there; the answer being `watch`ed
    gets each of its note-ons as it goes out (`sent`). Thread-safe.

    The player's own held keys are not here: they are input (`InputDecoder.held`), and
    what the model's token stream leaves open is the timeline's (`Timeline.stream.model_sounding`).
    """

    def __init__(self, roll: RollWriter | None = None) -> None:
        self._lock = threading.Lock()
        self._notes: dict[tuple[int, int], deque[SoundingNote]] = {}
        self._keys: dict[int, tuple[int, int]] = {}  # note id -> (channel, pitch) of a sounding note
        self._scheduled: dict[Hashable, int] = {}  # key scheduled on, its note-off not yet -> note id
        self._ids = itertools.count()
        self._roll = roll
        self._watched: Watched | None = None
        self.channels_used: set[int] = set()

    # --- scheduled, not sent yet -------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def schedule(self, key: Hashable, note_id: int) -> None:
        """A note-on of `key` is scheduled as `note_id` (a re-strike names the newer note)."""
        with self._lock:
            self._scheduled[key] = note_id

    def scheduled(self, key: Hashable) -> int | None:
        """The id a note-off of `key` releases (None: nothing scheduled under it), forgotten."""
        with self._lock:
            return self._scheduled.pop(key, None)

    def forget_scheduled(self) -> None:
        """No later note-off is to release what was scheduled (cancelled, rewound)."""
        with self._lock:
            self._scheduled.clear()

    def watch(self, answer: Watched | None) -> None:
        """From now on `answer`'s note-ons are written into it as they go out (None: none's)."""
        self._watched = answer

    # --- sent and released -------------------------------------------------------------------
    def sent(self, tag: int, note_id: int, due: float, at: float) -> None:
        """A note-on of answer `tag` went out at `at` (due at `due`): the watched answer notes it."""
        a = self._watched
        if a is not None and a.tag == tag:
            a.sent.add(note_id)
            if a.first is None:
                a.first = (due, at)

    def note_on(self, channel: int, pitch: int, t: float | None = None, note_id: int | None = None,
                velocity: int = 0) -> int:
        """Record a note-on we sent; returns its id."""
        nid = next(self._ids) if note_id is None else note_id
        note = SoundingNote(channel, pitch, nid, time.perf_counter() if t is None else t)
        if self._roll is not None:
            note.roll = self._roll.opened(channel, pitch, velocity, note.start)
        with self._lock:
            self._notes.setdefault((channel, pitch), deque()).append(note)
            self._keys[nid] = (channel, pitch)
            self.channels_used.add(channel)
        return nid

    def _ended(self, notes: Iterable[SoundingNote]) -> None:
        """The roll's notes end with these (outside the lock: the roll has its own)."""
        if self._roll is not None:
            t = time.perf_counter()
            for n in notes:
                if n.roll is not None:
                    self._roll.closed(n.roll, t)

    def note_off(self, channel: int, pitch: int) -> SoundingNote | None:
        """Record a note-off we sent; returns the note it ended (None if none sounded)."""
        with self._lock:
            q = self._notes.get((channel, pitch))
            if not q:
                return None
            note = q.popleft()
            if not q:
                del self._notes[(channel, pitch)]
            self._keys.pop(note.note_id, None)
        self._ended([note])
        return note

    def end(self, note_id: int) -> SoundingNote | None:
        """Record the note-off of the note with this id; returns it (None if it is not sounding:
        never sent, or ended already)."""
        with self._lock:
            key = self._keys.pop(note_id, None)
            if key is None:
                return None
            q = self._notes[key]
            note = next(n for n in q if n.note_id == note_id)
            q.remove(note)
            if not q:
                del self._notes[key]
        self._ended([note])
        return note

    def __bool__(self) -> bool:
        return bool(self._notes)

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
        """Messages that silence everything we started, and forget it all (what is
        scheduled stays: a later note-off of it finds nothing sounding and sends nothing).

        A note-off for every sounding voice, then sustain off (CC64=0) and all notes off
        (CC123=0) on every channel we ever used -- the CCs catch what a synth holds that
        we do not know about (a pedal, a voice whose note-off got lost on the way).
        """
        with self._lock:
            notes = sorted((n for q in self._notes.values() for n in q), key=lambda n: n.start)
            self._notes.clear()
            self._keys.clear()
            channels = sorted(self.channels_used)
        self._ended(notes)
        msgs = [bytes([NOTE_OFF | n.channel, n.pitch, 0]) for n in notes]
        for ch in channels:
            msgs.append(bytes([CC | ch, CC_SUSTAIN, 0]))
            msgs.append(bytes([CC | ch, CC_ALL_NOTES_OFF, 0]))
        return msgs


# --- incoming messages ---------------------------------------------------------------------------


@dataclass
class DropCounters:
    """What an input threw away, by reason (shown in stats and the log, never raised).

    Each reason counts messages (or, for `no_status` and `undefined`, single bytes);
    `bytes` counts every byte thrown away under any reason, so nothing goes unaccounted.
    """

    sysex: int = 0  # system exclusive, complete or torn: the session has no use for it
    no_status: int = 0  # a data byte with no status to belong to (stray, or after a lost status)
    undefined: int = 0  # 0xF4, 0xF5, 0xF9, 0xFD, a stray 0xF7, or a value that is not a byte
    length: int = 0  # a message cut short by the next status byte
    overflow: int = 0  # times the MIDI driver's input queue filled up: what came then was lost
    bytes: int = 0  # every byte thrown away above

    @property
    def total(self) -> int:
        """Messages (and stray bytes) lost, all reasons together."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "bytes")

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Our own marker (0x7D: the ID for non-commercial use), sent into an input to end a sysex
# the driver is still holding open; it is expected, so it is neither passed on nor counted.
RESET_SYSEX = bytes([0xF0, 0x7D, 0x4D, 0x42, 0xF7])

_SYSTEM_COMMON_LEN = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1}
_UNDEFINED = frozenset({0xF4, 0xF5, 0xF9, 0xFD})


class MidiParser:
    """Incoming bytes -> complete MIDI messages, by MIDI's byte-stream rules.

    Why a stream and not message by message: a driver may glue several messages into one
    event (RtMidi's JACK input appends everything after a sysex that lacks its 0xF7 to
    that sysex) or split one across two, and a flaky device tears messages. So, as a
    receiving instrument does: any status byte other than real-time ends a sysex or an
    unfinished message; real-time bytes (0xF8-0xFF) may sit anywhere, even inside another
    message, and come out at once; channel messages keep running status; sysex, undefined
    status bytes and data bytes without a status are dropped and counted in `counters`.
    Whatever came before, the next complete message with its status byte comes out.
    Never raises. One parser per input: the state carries from one `feed` to the next.
    """

    def __init__(self, counters: DropCounters | None = None):
        self.counters = counters if counters is not None else DropCounters()
        self.resets = 0  # RESET_SYSEX markers seen (expected: not counted as dropped)
        self.implied = 0  # status bytes of passed messages supplied by running status
        self._msg = bytearray()  # the message being collected, status byte first
        self._want = 0  # its complete length
        self._implied = False  # its status byte came from running status, not the input
        self._running = 0  # running status: the last channel status byte, 0 for none
        self._sysex: bytearray | None = None  # a sysex being skipped: its first bytes
        self._sysex_len = 0

    @property
    def pending(self) -> int:
        """Input bytes held for a message (or sysex) not finished yet."""
        return len(self._msg) - self._implied + (self._sysex_len if self._sysex is not None else 0)

    def feed(self, data: bytes | bytearray | Iterable[int]) -> list[bytes]:
        """The messages completed by `data`, in order."""
        out: list[bytes] = []
        for b in data:
            if not isinstance(b, int) or not 0 <= b <= 0xFF:
                self._drop("undefined", 1)
                continue
            if b >= 0xF8:  # real-time: at once, wherever it is; running status stays
                if b in _UNDEFINED:
                    self._drop("undefined", 1)
                else:
                    out.append(bytes((b,)))
            elif b >= 0x80:
                self._status(b, out)
            elif self._sysex is not None:
                self._sysex_len += 1
                if len(self._sysex) < len(RESET_SYSEX):
                    self._sysex.append(b)
            elif self._msg:
                self._data(b, out)
            elif self._running:
                self._msg, self._want = bytearray((self._running,)), _CHANNEL_LEN[self._running & 0xF0]
                self._implied = True
                self._data(b, out)
            else:
                self._drop("no_status", 1)
        return out

    def _status(self, b: int, out: list[bytes]) -> None:
        if b == 0xF7 and self._sysex is not None:  # the end of a sysex
            whole = bytes(self._sysex) + b"\xf7"
            if whole == RESET_SYSEX and self._sysex_len + 1 == len(RESET_SYSEX):
                self.resets += 1
            else:
                self._drop("sysex", self._sysex_len + 1)
            self._sysex, self._running = None, 0
            return
        self._end_unfinished()
        self._running = 0  # every status byte but real-time cancels running status
        if b < 0xF0:
            self._running = b
            self._msg, self._want = bytearray((b,)), _CHANNEL_LEN[b & 0xF0]
        elif b == 0xF0:
            self._sysex, self._sysex_len = bytearray((b,)), 1
        elif b in _SYSTEM_COMMON_LEN:
            self._msg, self._want = bytearray((b,)), _SYSTEM_COMMON_LEN[b]
            if self._want == 1:
                out.append(bytes(self._msg))
                self._msg = bytearray()
        else:  # 0xF4, 0xF5, or 0xF7 with no sysex open
            self._drop("undefined", 1)

    def _data(self, b: int, out: list[bytes]) -> None:
        self._msg.append(b)
        if len(self._msg) == self._want:
            out.append(bytes(self._msg))
            self.implied += self._implied
            self._msg, self._implied = bytearray(), False

    def _end_unfinished(self) -> None:
        """A status byte arrived: what was unfinished is torn, dropped and counted."""
        if self._msg:
            self._drop("length", len(self._msg) - self._implied)
            self._msg, self._implied = bytearray(), False
        if self._sysex is not None:
            self._drop("sysex", self._sysex_len)
            self._sysex = None

    def _drop(self, reason: str, nbytes: int) -> None:
        c = self.counters
        setattr(c, reason, getattr(c, reason) + 1)
        c.bytes += nbytes


# --- loopback echoes ---------------------------------------------------------------------------------


class EchoGuard:
    """Recognises our own notes coming back within `window_s` of sending them.

    Each sent note-on/off may excuse one matching (channel, pitch, on/off) arrival, but
    only while there is a loop: `loop` follows how many of our notes came back (a moving
    average, starting at 1 so a loop is caught from the first note). Without one, our
    notes stop coming back, `loop` falls below `LOOP_ON` after a handful of notes, and a
    player who doubles the model's note within the window is heard, not swallowed.

    Until one of our notes has come back with its very velocity (what an IAC bus or a DAW
    track does), a note-on is an echo only with that velocity: in accompany mode the model
    doubles the player's line, and at the start of a jam a doubled player note (same key
    within 50 ms, another velocity) was taken for an echo and lost. Once a loop is proven,
    an echo may come back with its velocity changed. A note-off is an echo only for a key
    whose note-on was one: the player's own release is never swallowed.
    Thread-safe: `sent` runs in the output thread, `is_echo` on the input's polling thread.
    """

    LOOP_ON = 0.3

    def __init__(self, window_s: float = 0.05):
        self.window_s = window_s
        self.loop = 1.0
        self.proven = False  # one of our notes came back exactly: there is a loop
        self._lock = threading.Lock()
        self._sent: deque[tuple[float, tuple[int, int, bool], int]] = deque()  # (time, key, velocity)
        self._echoing: set[tuple[int, int]] = set()  # keys whose note-on came back as an echo

    def sent(self, msg: bytes | bytearray, t: float | None = None) -> None:
        key = note_key(msg)
        if key is None:
            return
        now = time.perf_counter() if t is None else t
        with self._lock:
            self._expire(now)
            self._sent.append((now, key, msg[2] if key[2] else 0))

    def is_echo(self, msg: bytes | bytearray, t: float | None = None) -> bool:
        """True (and the match is used up) if `msg` is a note we sent within the window."""
        key = note_key(msg)
        if key is None:
            return False
        now = time.perf_counter() if t is None else t
        ch_pitch = (key[0], key[1])
        with self._lock:
            self._expire(now)
            if not key[2] and ch_pitch not in self._echoing:
                return False  # the player's own release
            for i, (_, k, vel) in enumerate(self._sent):
                if k != key:
                    continue
                exact = not key[2] or vel == msg[2]
                if not exact and not self.proven:
                    return False  # not proven to be a loop: a doubled note, the player's
                del self._sent[i]
                looping = self.loop >= self.LOOP_ON
                self.loop = 0.75 * self.loop + 0.25  # it came back
                if looping and key[2]:
                    self.proven = self.proven or exact
                    self._echoing.add(ch_pitch)
                elif looping:
                    self._echoing.discard(ch_pitch)
                return looping
        return False

    def _expire(self, now: float) -> None:
        while self._sent and now - self._sent[0][0] > self.window_s:
            self._sent.popleft()
            self.loop *= 0.75  # a note of ours that did not come back
            if self.loop < self.LOOP_ON:
                self.proven = False  # the loop is gone (rerouted): prove it again
