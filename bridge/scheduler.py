"""Lookahead scheduling: events in beats go out at their time, in their own thread.

Generation runs ahead in a worker and hands events over with their beat; this thread
turns beats into wall time through the clock *at send time* (so a tempo change in the
DAW moves everything not yet sent) and sends each message when its time comes: a
coarse wait on a condition variable, then a short spin for the last 1.5 ms, which on
this kind of machine keeps send jitter well under a millisecond.

A note whose time has already passed by more than `late_s` is dropped, never bunched:
a late answer sounds thinner, not rushed. Its note-off is dropped with it. Every note
sent is tracked (see `safety.NoteTracker`, which writes the roll too), so panic and
shutdown release exactly what sounds, and a note held past `max_note_s` is released by
the guard.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .safety import NoteTracker, RollWriter

SPIN_S = 0.0015


def _try_realtime_priority() -> bool:
    """Ask for SCHED_FIFO for this thread (Linux; allowed for root or an rtprio limit, as
    audio setups grant): on a busy machine it keeps sends on time. Silently stays normal."""
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        return True
    except (AttributeError, OSError, PermissionError):
        return False


@dataclass(order=True)
class Scheduled:
    beat: float
    seq: int
    kind: str = field(compare=False)  # "on" | "off"
    channel: int = field(compare=False, default=0)
    pitch: int = field(compare=False, default=0)
    velocity: int = field(compare=False, default=0)
    note_id: int = field(compare=False, default=-1)
    tag: int = field(compare=False, default=0)  # which answer it belongs to (for cancel)
    queued_at: float = field(compare=False, default=0.0)  # perf_counter when it reached the scheduler


class Scheduler:
    """Sends scheduled note events on time; tracks and releases every note it sent."""

    def __init__(self, send: Callable[[bytes], None], time_at: Callable[[float], float],
                 late_s: float = 0.03, max_note_s: float = 8.0, latency_s: float = 0.0,
                 roll: RollWriter | None = None):
        self._send = send
        self.time_at = time_at  # beat -> perf_counter time (the clock, consulted at send time)
        self.late_s = late_s
        self.max_note_s = max_note_s
        self.latency_s = latency_s  # sent this much early to make up for the output's latency
        self.tracker = NoteTracker(roll)  # the notes scheduled, sent and not released, by the ids given here
        self._heap: list[Scheduled] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._dropped_ids: set[int] = set()
        self.jitter_ms: list[float] = []  # actual - scheduled (or - arrival, when it came late), per message sent
        self.arrived_late = 0  # messages handed over after they were due (the generator behind)
        self.dropped_late = 0
        self.sent = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="musebridge-out", daemon=True)

    # --- feeding --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def new_note_id(self) -> int:
        return self.tracker.new_id()

    def note(self, beat: float, end_beat: float, channel: int, pitch: int, velocity: int, tag: int = 0) -> int:
        """Schedule one note (on and off); returns its id."""
        nid = self.new_note_id()
        self.push(Scheduled(beat, 0, "on", channel, pitch, velocity, nid, tag))
        self.push(Scheduled(end_beat, 0, "off", channel, pitch, 0, nid, tag))
        return nid

    def push(self, item: Scheduled) -> None:
        item.seq = next(self._seq)
        item.queued_at = time.perf_counter()
        with self._cv:
            heapq.heappush(self._heap, item)
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def cancel(self, tag: int | None = None, after_beat: float | None = None) -> int:
        """Drop pending note-ons (of one answer, or all; from a beat on) and release at once
        the notes of that answer that are sounding. Returns how many notes were dropped."""
        with self._cv:
            keep, dropped = [], 0
            for it in self._heap:
                hit = (tag is None or it.tag == tag) and (after_beat is None or it.beat >= after_beat)
                if hit and it.kind == "on":
                    dropped += 1
                    self._dropped_ids.add(it.note_id)
                elif hit and it.kind == "off":
                    note = self.tracker.end(it.note_id)
                    if note is not None:  # sounding: released now
                        self._emit(bytes([0x80 | note.channel, note.pitch, 0]))
                else:
                    keep.append(it)
            heapq.heapify(keep)
            self._heap = keep
            self._cv.notify()
            return dropped

    def panic(self) -> None:
        """Forget everything pending and release everything sounding (offs, CC64=0, CC123)."""
        with self._cv:
            self._heap.clear()
            self._dropped_ids.clear()
            for msg in self.tracker.release_all():
                self._emit(msg)
            self._cv.notify()

    def stop(self) -> None:
        """Panic, then end the thread."""
        self.panic()
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    # --- the thread --------------------------------------------------------------------------
    def _emit(self, msg: bytes) -> None:
        try:
            self._send(msg)
        except Exception:  # a vanished port must never kill the output thread
            pass

    def _run(self) -> None:
        _try_realtime_priority()
        while True:
            with self._cv:
                if self._stop:
                    return
                self._release_expired()
                if not self._heap:
                    self._cv.wait(0.05)
                    continue
                head = self._heap[0]
                due = self.time_at(head.beat) - self.latency_s
                wait = due - time.perf_counter()
                if wait > SPIN_S:
                    self._cv.wait(min(wait - SPIN_S, 0.05))
                    continue
            while time.perf_counter() < due:  # spin outside the lock: the last ~1.5 ms
                pass
            with self._cv:
                if self._stop:
                    return
                if not self._heap or self._heap[0] is not head:
                    continue  # cancelled or something earlier arrived meanwhile
                heapq.heappop(self._heap)
                self._fire(head, due)

    def _fire(self, it: Scheduled, due: float) -> None:
        now = time.perf_counter()
        late = now - due
        if it.kind == "on":
            if it.note_id in self._dropped_ids or late > self.late_s:
                self._dropped_ids.add(it.note_id)
                if late > self.late_s:
                    self.dropped_late += 1
                return
            if self.tracker.note_off(it.channel, it.pitch) is not None:  # re-strike of a sounding key
                self._emit(bytes([0x80 | it.channel, it.pitch, 0]))
            self._emit(bytes([0x90 | it.channel, it.pitch, max(1, min(127, it.velocity))]))
            self.tracker.note_on(it.channel, it.pitch, now, note_id=it.note_id, velocity=it.velocity)
        else:
            self._dropped_ids.discard(it.note_id)
            if self.tracker.end(it.note_id) is None:
                return  # its note-on was dropped, or it was released already
            self._emit(bytes([0x80 | it.channel, it.pitch, 0]))
        self.sent += 1
        sent_at = time.perf_counter()
        # the scheduler's own lateness: from when it was due, or from when it arrived if it
        # arrived after that (a generator that fell behind is counted apart, in `arrived_late`)
        if it.queued_at > due:
            self.arrived_late += 1
        self.jitter_ms.append((sent_at - max(due, it.queued_at)) * 1000.0)
        if len(self.jitter_ms) > 100_000:
            del self.jitter_ms[:50_000]
        if it.kind == "on":
            self.tracker.sent(it.tag, it.note_id, due, sent_at)

    def _release_expired(self) -> None:
        if not self.tracker:
            return
        now = time.perf_counter()
        for ch, p in self.tracker.expired(now, self.max_note_s):
            self.tracker.note_off(ch, p)  # its own note-off, when it comes, finds nothing to do (the roll's note ends)
            self._emit(bytes([0x80 | ch, p, 0]))

    def jitter_stats(self) -> dict:
        j = np.abs(np.array(self.jitter_ms[-10_000:] or [0.0]))
        return {"p50_ms": float(np.percentile(j, 50)), "p99_ms": float(np.percentile(j, 99)),
                "max_ms": float(j.max()), "sent": self.sent, "dropped_late": self.dropped_late,
                "arrived_late": self.arrived_late}
