"""A MIDI input: a polling thread of ours, the driver's bytes read as a stream, arrival times.

`MidiInput` polls rtmidi from its own thread (no callback on the driver's thread) and
drains everything rtmidi holds per wake; what the driver hands over goes through
`safety.MidiParser`, so garbage costs only itself; each message is timed on the
`time.perf_counter()` clock from the driver's own delta stamps (`ArrivalClock`), because
the clock follower and phrase detection need arrival times on the clock the scheduler
sends by. On JACK, `_SysexReset` ends a sysex the driver holds open.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from typing import Callable, Iterator

import rtmidi

from .midi_system import CLIENT_NAME, abandon, open_client
from .ports import DEFAULT_IN, _own_ports, _Port
from .safety import RESET_SYSEX, DropCounters, MidiParser

Message = tuple[bytes, float]  # (message, perf_counter arrival time)
Callback = Callable[[bytes, float], None]


class ArrivalClock:
    """perf_counter times for incoming messages from the driver's own delta times.

    rtmidi stamps each message with the time since the previous one, taken by the MIDI
    driver (JACK: its process cycle; ALSA: the sequencer queue; CoreMIDI: the packet). A
    polling thread that wakes late on a busy machine would otherwise date a message late
    by as much as it slept. The deltas are summed into the driver's timeline, which is
    tied to perf_counter by the least-delayed poll seen (the smallest poll - driver
    offset). That offset creeps up by `CREEP` seconds a second, faster than any clock
    slew, so driver clock drift and a driver that reports no deltas at all fall back to
    the poll time; a stamp is never later than the poll, nor more than `MAX_AGE` earlier.
    """

    CREEP = 0.001
    MAX_AGE = 0.02

    def __init__(self) -> None:
        self.driver = 0.0  # seconds on the driver's timeline since the first message
        self.offset: float | None = None  # perf_counter - driver time, least delay seen
        self._last = 0.0

    def stamp(self, delta: float, now: float) -> float:
        if math.isfinite(delta) and delta > 0:  # a driver without stamps gives 0 (or nothing usable)
            self.driver += delta
        lag = now - self.driver
        if self.offset is None:
            self.offset = lag
        else:
            self.offset = min(lag, self.offset + self.CREEP * max(now - self._last, 0.0))
        self._last = now
        t = self.driver + self.offset
        if now - t > self.MAX_AGE:  # the driver's times went astray: trust the poll
            self.offset, t = lag, now
        return t


# rtmidi's input ring buffer, in messages: rtmidi's default (1,024) overflowed under a
# 2,000 notes/s flood while the model held the GIL (814-4,214 of them lost); this holds
# 30 s of such a flood with our polling thread stalled.
QUEUE_SIZE = 65536
POLL_S = 0.0005  # the polling thread's sleep when rtmidi has nothing
CLOSE_WAIT_S = 10.0  # how long close waits for the poller to leave rtmidi before freeing it
UNSTICK_S = 0.005  # nothing from the driver this long: send RESET_SYSEX (see _SysexReset)


def _midi_in(api: int, name: str) -> rtmidi.MidiIn:
    return rtmidi.MidiIn(api, name=name, queue_size_limit=QUEUE_SIZE)


class _SysexReset:
    """A client of ours whose one port plays into our own input, to end a sysex the
    driver holds open.

    RtMidi's JACK input appends every event after a sysex that lacks its 0xF7 to that
    sysex and hands over nothing until an event ends in 0xF7 (measured: `F0 01`, then
    notes, CC, clock and Start: nothing arrived; `jack_midi_dump` shows them as separate
    events). No parser can take apart what it is never given. So when the input has
    been quiet for `UNSTICK_S`, `send` plays RESET_SYSEX into it: what was held comes out
    glued to the marker (`MidiParser` separates it and skips the marker), and an idle
    input just gets the marker back. JACK only, where this was measured.

    Our input port is found by renaming it to a unique name for a moment (JACK keeps
    connections through a rename): its client name is JACK's to choose ("name-01")."""

    def __init__(self, client_name: str):
        self.client_name = f"{client_name} reset"
        self._out = open_client(rtmidi.MidiOut, rtmidi.API_UNIX_JACK, self.client_name)

    def attach(self, rt_in: rtmidi.MidiIn, local_name: str) -> None:
        """Connect to `rt_in`'s port (again, after it was reopened)."""
        unique = f"{local_name} {os.getpid()}.{id(self):x}"
        if self._out.is_port_open():
            self._out.close_port()
        rt_in.set_port_name(unique)
        try:
            ports = self._out.get_ports()
            i = next(i for i, p in enumerate(ports) if p.endswith(":" + unique))
            self._out.open_port(i, f"{local_name} reset")
            _own_ports.add((self.client_name, f"{local_name} reset"))
        finally:
            rt_in.set_port_name(local_name)

    def send(self) -> None:
        self._out.send_message(RESET_SYSEX)

    def close(self) -> None:
        try:
            self._out.close_port()
        finally:
            self._out.delete()


class MidiInput(_Port):
    """A MIDI input: messages arrive as (bytes, perf_counter time), one complete message each.

    Messages are polled by a thread of ours, not delivered by an rtmidi callback: a
    Python callback runs on JACK's process thread and needs the GIL, and with a
    synchronous server (`jackd -S`) that deadlocked whenever this process opened or
    closed another JACK client while holding the GIL (seen: CI hung in client open/close).
    Each wake drains everything rtmidi holds; when it holds nothing the thread sleeps
    `POLL_S`. With `callback`, it is called as `callback(msg, t)` on the polling thread
    (return quickly); otherwise messages queue up for `receive`, `poll` and
    `iter_pending`. Times come from the driver's stamps (`ArrivalClock`), not from when
    the poll woke.

    What the driver hands over is read as a byte stream (`MidiParser`), because drivers
    glue and split messages: whatever garbage came before, the next valid message is
    heard. Sysex, torn messages and stray bytes are dropped and counted in `dropped`;
    clock and transport come through; active sensing is ignored. rtmidi's queue holds
    `QUEUE_SIZE` messages; a drain that finds it full counts `dropped.overflow` (rtmidi
    itself only prints "message queue limit reached" on stderr: it reports overflow
    through no callback, so how many were lost is not known). On JACK a `_SysexReset`
    client ends a sysex the driver holds open. (rtmidi filters nothing itself: a message
    it skipped would leave a gap in the driver's delta times.)
    """

    kind = "input"
    _rt_class = staticmethod(_midi_in)
    _default_name = DEFAULT_IN

    def __init__(self, port: str | None = None, *, virtual: bool | None = None, api: str | int = "auto",
                 callback: Callback | None = None, client_name: str = CLIENT_NAME,
                 dropped: DropCounters | None = None):
        self.callback = callback
        self.dropped = dropped if dropped is not None else DropCounters()  # a caller's own outlives the port
        self.callback_errors = 0
        self.last_error: str | None = None
        self._parser = MidiParser(self.dropped)
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._arrivals = ArrivalClock()
        self._polling = threading.Event()
        self._reset: _SysexReset | None = None
        self._client_name = client_name
        super().__init__(port, virtual, api, client_name)
        if self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        self._polling.set()
        self._poller = threading.Thread(target=self._poll_loop, name=f"midi-in {self.name}", daemon=True)
        self._poller.start()

    def _configure(self) -> None:
        self._rt.ignore_types(sysex=False, timing=False, active_sense=False)

    def _client_gone(self) -> None:
        """The poller ends by itself (it finds no client); its reset client died too."""
        poller = getattr(self, "_poller", None)
        if poller is not None and poller.is_alive() and poller is not threading.current_thread():
            poller.join(timeout=1.0)
        reset, self._reset = self._reset, None
        if reset is not None:
            abandon(reset._out)

    def _client_back(self) -> None:
        if self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        self._poller = threading.Thread(target=self._poll_loop, name=f"midi-in {self.name}", daemon=True)
        self._poller.start()

    def _attach_reset(self) -> None:
        """Open (or reconnect) the sysex reset client; without it the input still works,
        it just stays deaf after a torn sysex until the peer sends an 0xF7."""
        try:
            if self._reset is None:
                self._reset = _SysexReset(self._client_name)
            self._reset.attach(self._rt, self.local_name)
        except Exception as e:  # StopIteration, RtMidiError, MuseBridgeError: never fail the input
            self.last_error = f"sysex reset port: {type(e).__name__}: {e}"
            if self._reset is not None:
                self._reset.close()
            self._reset = None

    def reconnect(self) -> bool:
        """As for any port; the sysex reset client follows the reopened port."""
        ok = super().reconnect()
        if ok and not self.virtual and self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        return ok

    def _poll_loop(self) -> None:
        quiet_since = time.perf_counter()
        while self._polling.is_set():
            rt = self._rt
            if rt is None:
                return
            try:
                n = self._drain(rt)
                now = time.perf_counter()
                if n:
                    quiet_since = now
                elif now - quiet_since >= UNSTICK_S and self._reset is not None:
                    self._reset.send()
                    quiet_since = now
                else:
                    time.sleep(POLL_S)
            except Exception:
                return

    def _drain(self, rt: rtmidi.MidiIn) -> int:
        """Hand on everything rtmidi holds now; how many driver events that was."""
        n = 0
        while self._polling.is_set() and (event := rt.get_message()) is not None:
            self._on_message(event)
            n += 1
            if n % (QUEUE_SIZE - 1) == 0:  # a full ring's worth in one go: it filled up, maybe lost some
                self.dropped.overflow += 1
        return n

    def close(self) -> None:
        """Stop polling, then close the port and free the clients; safe to call twice."""
        self._polling.clear()
        poller = getattr(self, "_poller", None)
        if poller is not None and poller.is_alive() and poller is not threading.current_thread():
            # The poller may be inside rtmidi (or a slow callback) right now: freeing the
            # clients under it crashed the process (a segfault in a loaded test run, when
            # a 1 s join timed out). Wait for it; if it never comes back, leave the clients
            # to the process's exit: a leaked client beats a crash.
            poller.join(timeout=CLOSE_WAIT_S)
            if poller.is_alive():
                self.last_error = f"input poller still busy after {CLOSE_WAIT_S:.0f} s; its port is left open"
                return
        reset, self._reset = getattr(self, "_reset", None), None
        try:
            super().close()
        finally:
            if reset is not None:
                reset.close()

    def _on_message(self, event: tuple[list[int], float]) -> None:
        t = self._arrivals.stamp(event[1], time.perf_counter())  # first thing, for every driver event
        for msg in self._parser.feed(event[0]):
            if msg == b"\xfe":
                continue  # active sensing: a keep-alive, not music
            cb = self.callback
            if cb is None:
                self._queue.put((msg, t))
                continue
            try:
                cb(msg, t)
            except Exception as e:  # an exception must not unwind into the polling thread
                self.callback_errors += 1
                self.last_error = f"{type(e).__name__}: {e}"

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (forever if None); None on timeout."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def poll(self) -> Message | None:
        """The next message if one is waiting, else None."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def iter_pending(self) -> Iterator[Message]:
        """Every message waiting now."""
        while (m := self.poll()) is not None:
            yield m
