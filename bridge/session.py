"""The jam session: the one object `musebridge jam` and the app both drive.

Data flows one way: ports (`SessionPorts`) -> input (`InputDecoder`: bytes -> notes,
pedals, triggers, controls) -> timeline (`Timeline`: the token stream and the model) ->
output (`ModelOutput`: the model's notes -> `Scheduler`, whose tracker knows what sounds)
-> ports. Song time is `SessionClock`'s; what happened (roll, answers, latencies) goes
into `JamRecord`, which the app reads. Call and response and accompaniment are parts of
the session itself (`CallResponseMixin`, `AccompanyMixin`).

Threads, and why each exists:
- the MIDI input's polling thread (`midi_input.MidiInput`) hands each message, timed
  from the driver's stamps, to `_on_midi`, which only filters and queues; clock and
  transport go straight to the clock follower;
- the worker owns the model timeline: it turns played notes into tokens as they
  arrive, notices phrase ends, and generates -- nothing else touches the KV cache;
- the scheduler's thread sends events at their time and tracks every note it sent; its
  tracker writes the roll and the answer being played (no callback into the session).
Controls (mode, strengths, temperature, panic) may come from any thread: they are
applied between two sampling steps.

Times: the clock gives song beats; the timeline counts beats from `origin` (a bar line
at the session start), so the model's beat features stay aligned with the DAW's bars.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

from musebridge.engine.music.events import Event, Note, NoteOff, NoteOn, Pedal
from musebridge.engine.decode.sampling import LogitShaper
from musebridge.errors import MuseBridgeError

from .accompany import AccompanyMixin
from .call_response import CallResponseMixin
from .cc_map import CCMap
from .clock import SessionClock, line_at_or_after, line_at_or_before, next_line
from .config import MODES, JamConfig
from .input_decoder import Control, InputDecoder, Played, Trigger
from .jam_record import JamRecord, LiveAnswer
from .model_output import ModelOutput
from .ranking import open_ranker
from .session_ports import SessionPorts
from .timeline import Timeline, jam_families

Listener = Callable[[dict], None]


@dataclass(frozen=True)
class Counts:
    """What a jam took in and played out (`JamSession.counts`; the `stopped` event's `counters`)."""

    notes_in: int = 0  # the player's note-ons heard
    ignored: int = 0  # messages that were neither notes nor controls we use
    echo: int = 0  # our own notes coming back through a loopback
    answers: int = 0  # answers played to their end


@dataclass(frozen=True)
class Health:
    """What the app's status bar and meter show of the ports and the output (`JamSession.health`)."""

    input_dropped: int  # garbage, sysex and queue overflows the input threw away
    send_jitter_p99_ms: float | None  # how late the scheduler's sends were (None before any)


class JamSession(CallResponseMixin, AccompanyMixin):
    """Ports + clock + timeline + scheduler. `start()`, then play; `stop()` always releases."""

    def __init__(self, config: JamConfig, runtime=None, listener: Listener | None = None, ports: bool = True,
                 ccmap: CCMap | None = None):
        self.cfg = config.validate()
        self.ccmap = ccmap if ccmap is not None else CCMap()
        self._runtime = runtime
        self._ranker = None  # how candidate answers are ranked (opened with the runtime when candidates > 1)
        self.listeners: list[Listener] = [listener] if listener else []
        self._use_ports = ports
        self.ports = SessionPorts()
        self.clock = SessionClock(self.cfg)
        self.timeline: Timeline | None = None
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._batch: list[Event] = []  # played events not yet given to the model
        self.controls = self.cfg.controls
        self._controls_changed = True
        self.mode = self.cfg.mode
        self.state = "stopped"  # stopped | listening | answering | accompanying
        self.origin = 0.0
        self.decoder = InputDecoder(self.cfg, lambda t: self._song_beat(t) - self.origin, self.ccmap)
        self.record = JamRecord()  # the roll, the answers and the latencies: what the app shows
        self.output = ModelOutput(self.record)  # the model's notes to the scheduler, and into the roll
        self.error: str | None = None
        self._tag = 0
        self._answer: LiveAnswer | None = None
        self._phrase_notes = 0
        self._last_input_beat = -math.inf
        self._committed: deque = deque(maxlen=4096)  # accompany: (beat, event) sent to the scheduler
        self._pending: list[Event] = []  # accompany: generated, not committed
        self._rng = np.random.default_rng(self.controls.seed)
        self._shaper: LogitShaper | None = None

    # --- events out (log, app) -------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "t": round(time.time(), 4), **fields}
        for fn in list(self.listeners):
            try:
                fn(rec)
            except Exception:
                pass

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        from musebridge.engine.decode.backends import open_runtime

        # Python hands the GIL between threads every 5 ms by default: a scheduler thread
        # waiting on a worker busy in Python code would send up to 5 ms late. 0.5 ms.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        if self._runtime is None:
            self._runtime = open_runtime(self.cfg.model, self.cfg.backend)
        if self.cfg.candidates > 1 and self._ranker is None:  # the critic: opened now, not at a phrase end
            self._ranker = open_ranker(self.cfg.model, self._runtime.vocab, threads=1)
        if self._use_ports:
            self.decoder.echo = self.ports.open(self.cfg, self._on_midi)  # what it sends, heard coming back
        self.ports.programs = self.output.programs() if self.cfg.program_changes else []
        self.output.start(self.ports.send, self._time_at, self.clock.beat_at, late_s=self.cfg.late_ms / 1000,
                          max_note_s=self.cfg.max_note_beats * 60.0 / self.cfg.bpm,
                          latency_s=(self.cfg.latency_ms or 0.0) / 1000)
        self._new_timeline()
        self.ports.send_programs()
        self._stop.clear()
        self.state = "accompanying" if self.mode == "accompany" else "listening"
        self._worker = threading.Thread(target=self._work, name="musebridge-engine", daemon=True)
        self._worker.start()
        self.emit("ready", mode=self.mode, backend=getattr(self._runtime, "name", "?"),
                  **self.ports.names(),
                  clock="midi" if self.clock.following else "internal", bpm=round(self.clock.bpm, 2))

    def stop(self) -> None:
        """Stop generating, release every note, close the ports. Safe to call twice."""
        self._stop.set()
        self._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        if self.output.scheduler is not None:
            self.output.stop()
            a = self._answer
            if a is not None and (self._worker is None or not self._worker.is_alive()):
                self._finish_answer(cancelled=self._song_beat() - self.origin < a.end)
            # the releases are queued in the MIDI driver: give it a few periods to deliver
            # them before the port closes (JACK drops what is queued at close)
            time.sleep(0.05)
        self.ports.close()
        if self.state != "stopped":
            self.state = "stopped"
            self.emit("stopped", **self.stats())

    def __enter__(self) -> "JamSession":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- controls (any thread) -----------------------------------------------------------------
    def panic(self) -> None:
        """Silence now: cancel generation, release every sounding note, then listen again."""
        with self._push_lock:  # nothing generated before this moment can be scheduled after it
            self._cancel.set()
            self._silence()
        self._queue.put(("panic", None))
        self.emit("panic")

    def cancel(self) -> None:
        """Drop the current answer (its sounding notes are released)."""
        self._cancel.set()
        self._queue.put(("cancel", None))

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
        self._cancel.set()
        self._queue.put(("mode", mode))

    def trigger(self) -> None:
        """End the phrase now (call and response) or play M bars now (one-shot)."""
        self._queue.put(("trigger", time.perf_counter()))

    def set_controls(self, **changes: Any) -> None:
        """Change sampling controls between two steps, e.g. temperature=0.9 or strengths={...}."""
        with self._lock:
            self.controls = replace(self.controls, **changes)  # validates
            self._controls_changed = True

    def set_strength(self, family: str, value: float) -> None:
        with self._lock:
            s = dict(self.controls.strengths)
            s[family] = value
            self.controls = replace(self.controls, strengths=s)
            self._controls_changed = True

    def set_config(self, **changes: Any) -> None:
        """Change jam settings, e.g. bars=4 or quantize=0.5. Answer length, quantize, silence
        and the input settings apply from the next phrase; ports, API, style, model and
        backend at the next `start()`."""
        cfg = replace(self.cfg, **changes).validate()
        if cfg.bpm != self.cfg.bpm:
            self.clock.internal.set_bpm(cfg.bpm)
        self.cfg = self.clock.cfg = self.decoder.cfg = cfg

    def replay(self, notes: Iterable[Note]) -> float:
        """Play finished notes (beats from 0) again from the next bar line, on the model's
        channels. Output only: the model does not hear them. Returns the song beat it starts on."""
        if self.output.scheduler is None or self.state == "stopped":
            raise MuseBridgeError("start the jam first: a clip plays again through the session's output")
        bpb = self.cfg.beats_per_bar
        now = self._song_beat() - self.origin + self._first_note_margin()
        start = next_line(now, bpb)
        self.output.replay(notes, start)
        return start + self.origin

    def _first_note_margin(self) -> float:
        """Beats the first token of an answer needs (a few ms): it starts no sooner."""
        return 0.03 * self.clock.bpm / 60.0

    def stats(self) -> dict:
        """What the `stopped` event carries: jitter, latencies, counts, drops, lost ports."""
        sc = self.output.scheduler.jitter_stats() if self.output.scheduler else {}
        return {"jitter": sc, **self.record.stats(), "counters": asdict(self.counts()),
                "answers": len(self.record.answers()), "input_dropped": self.ports.dropped.as_dict(),
                "lost_ports": sorted(self.ports.lost)}

    def health(self) -> Health:
        """Input drops and send jitter, read without reaching into ports or scheduler."""
        sc = self.output.scheduler
        jitter = sc.jitter_stats()["p99_ms"] if sc is not None and sc.sent else None
        return Health(self.ports.dropped.total, jitter)

    def counts(self) -> Counts:
        """What came in (notes, ignored messages, our own echoes) and answers played to their end."""
        d = self.decoder
        return Counts(ignored=d.ignored, notes_in=d.notes_in, echo=d.echoes, answers=self.record.completed)

    # --- MIDI in (the input's polling thread) --------------------------------------------------
    def _on_midi(self, msg: bytes, t: float) -> None:
        if not msg:
            return
        status = msg[0]
        if status >= 0xF8 or status == 0xF2:
            if self.cfg.clock != "internal":
                was = self.clock.midi.running
                self.clock.midi.feed(status, msg[1:], t)
                if status == 0xFC or (status in (0xFA, 0xFB) and not was):
                    self._queue.put(("transport", status))
            return
        if not self.decoder.admit(msg):
            return
        if status & 0xF0 == 0x90 and msg[2] > 0 and self.state == "answering":
            self._cancel.set()  # the player barges in: stop the answer at once
        self._queue.put(("midi", (msg, t)))

    # --- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.005)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(*item)
                    while not self._stop.is_set():  # drain what else arrived, in order; stop wins
                        try:
                            self._handle(*self._queue.get_nowait())
                        except queue.Empty:
                            break
                self._flush_input()
                self._watch_ports()
                if (news := self.ports.dropped_news()) is not None:
                    self.emit("input_dropped", **news)
                if self.mode in ("call", "oneshot"):
                    self._call_tick()
                elif self.mode == "accompany":
                    self._accompany_tick()
            except Exception as e:  # never die silently: say it, release, keep listening
                self.error = f"{type(e).__name__}: {e}"
                self.emit("error", message=self.error)
                self._silence()
                try:
                    self._cancel_answer()  # with its answer_end: a take is never lost
                except Exception:
                    self._answer = None
                    self._reset_after_cancel()

    def _watch_ports(self) -> None:
        """Every half second: the latency compensation follows the clock, and the ports are
        checked; what sounded on a port that went is gone with it."""
        if not self.ports.due():
            return
        self._update_latency()
        for ev in self.ports.check():
            if ev.kind == "server_lost":  # its note-offs cannot reach a dead server; when it returns nothing may sound
                self._silence()
                self._cancel_answer()
                self._take_played(self.decoder.release_held(self._song_beat() - self.origin))
                self.error = "the JACK server stopped: MIDI ports lost; waiting for it to return"
                self.emit("error", message=self.error, cause="port_lost")
            elif ev.kind == "server_back":
                self.error = None
            elif ev.kind == "lost" and ev.role == "output":
                self._silence()
            self.emit(ev.event, **ev.fields)

    def _update_latency(self) -> None:
        """The longest note follows the tempo; unless `latency_ms` is set, so does how early
        notes are sent (`SessionClock.output_latency`)."""
        if self.output.scheduler is None:
            return
        self.output.scheduler.max_note_s = self.cfg.max_note_beats * 60.0 / max(self.clock.bpm, 1.0)
        if self.cfg.latency_ms is None:
            self.output.scheduler.latency_s = self.clock.output_latency()

    def _flush_input(self) -> None:
        """Everything played since the last flush goes into the model in one append: a flood
        of notes costs one chunked prefill, not one model call per note."""
        if self._batch:
            evs, self._batch = self._batch, []
            evs.sort(key=lambda e: e.time)
            self._user_events(evs)

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "midi":
            self._midi_in(*arg)
            return
        self._flush_input()  # controls act after the notes that came before them
        if kind == "panic" or kind == "cancel":
            self._cancel_answer()
        elif kind == "mode":
            self._cancel_answer()
            self._silence()
            self.mode = arg
            self.state = "accompanying" if arg == "accompany" else "listening"
            self.emit("mode", mode=arg)
        elif kind == "trigger":
            if self.mode == "oneshot" or self.mode == "call":
                self._answer_now(arg, on=self.cfg.answer_on if self.mode == "call" else "beat")
        elif kind == "transport":
            self._cancel_answer()
            self._silence()
            if arg in (0xFA, 0xFB):
                self._rebase()
            self.emit("transport", status={0xFA: "start", 0xFB: "continue", 0xFC: "stop"}[arg])

    def _song_beat(self, t: float | None = None) -> float:
        return self.clock.beat_at(time.perf_counter() if t is None else t)

    def _time_at(self, timeline_beat: float) -> float:
        return self.clock.time_at(timeline_beat + self.origin)

    def _new_timeline(self) -> None:
        self.origin = line_at_or_before(self._song_beat(), self.cfg.beats_per_bar)
        fams = jam_families(self.cfg.in_family, self.controls.strengths)
        self.timeline = Timeline(self._runtime, self.cfg.style, fams, self.cfg.beats_per_bar)

    def _rebase(self) -> None:
        """The song position jumped (DAW start/locate): keep the timeline going from its end,
        on a bar line, so the token stream never runs backwards."""
        bpb = self.cfg.beats_per_bar
        self.origin = line_at_or_before(self._song_beat(), bpb) - line_at_or_after(self.timeline.time, bpb)

    # --- input -----------------------------------------------------------------------------------
    def _midi_in(self, msg: bytes, t: float) -> None:
        for item in self.decoder.decode(msg, t):
            if isinstance(item, Played):
                self._take_played([item])
            elif isinstance(item, Trigger):
                self._handle("trigger", item.t)
            elif isinstance(item, Control):
                self._apply_cc(item, t)

    def _take_played(self, played: list[Played]) -> None:
        """The player's notes and pedals: into the next batch for the model, notes into the
        roll; a key the player pressed or let go also counts for the phrase."""
        for p in played:
            ev = p.event
            self._batch.append(ev)
            if isinstance(ev, Pedal):
                continue
            on = isinstance(ev, NoteOn)
            self.record.note("user", ev.family, ev.pitch, ev.time + self.origin, on, ev.velocity if on else 0)
            if not p.assumed:
                self._phrase_notes += on
                self._last_input_beat = ev.time

    def _apply_cc(self, action: Control, t: float) -> None:
        target, value = action.target, action.value
        if target == "learned":
            self.emit("midi_learn", control=value[0], cc=value[1])
        elif target == "panic":
            self.panic()
        elif target == "trigger":
            self._handle("trigger", t)
        elif target == "mode":
            if value != self.mode:
                self._handle("mode", value)
        elif target.startswith("strength:"):
            self.set_strength(target.split(":", 1)[1], float(value))
        else:
            self.set_controls(**{target: value})
        if target not in ("learned", "panic", "trigger"):
            self.emit("control", control=target, value=value)

    def _user_events(self, events: list[Event]) -> None:
        tl = self.timeline
        beat = events[0].time
        struck = any(isinstance(e, NoteOn) for e in events)  # (a release can land late: no need to regenerate)
        after: list[Event] = []
        if self.state == "answering" and struck:
            self._barge_in(beat)
        elif self.mode == "accompany" and struck:
            after = self._accompany_input(beat)
        if tl.time - beat > 8 * self.cfg.beats_per_bar:
            self._rebase()  # a clock jump we missed: do not encode into the distant past
        tl.add(events)
        if after or (self.mode == "accompany" and struck):
            tl.mark()  # the next note the player plays can come back to here
        if after:
            tl.add(after, model=True)

    def _halted(self) -> bool:
        """Should generation stop at the next step? On cancel, and always once `stop()` began:
        a later trigger clears the cancel flag, never the stop flag, so stop wins over any backlog."""
        return self._cancel.is_set() or self._stop.is_set()

    def _measure(self, ans, seconds: float, beats: float) -> None:
        if ans.cancelled or ans.tokens == 0 or seconds <= 0:
            return
        self.record.generated(ans.tokens, seconds, beats * 60.0 / self.clock.bpm)

    # --- model notes -> scheduler ---------------------------------------------------------------
    def _schedule_model(self, ev: Event, commit: bool = False) -> None:
        if not isinstance(ev, (NoteOn, NoteOff)):
            return
        with self._push_lock:
            if self._cancel.is_set() or self._stop.is_set():
                return  # cancelled meanwhile: its notes must not be scheduled
            nid = self.output.push(ev, self._answer.tag if self._answer is not None else 0)
            if nid is not None and self._answer is not None:
                self._answer.add(ev, nid)
            if nid is not None and commit:
                self._committed.append((ev.time, ev))
        self._announce_start()  # while an answer is sampled, its first note may already have gone out

    def _silence(self) -> None:
        """Release every sounding note now (panic the scheduler), in the roll too."""
        self.output.silence()

    def playhead(self) -> float:
        """The song position now, in beats."""
        return self._song_beat()

    # --- sampling --------------------------------------------------------------------------------
    def _current_shaper(self, tag: int | None = None) -> LogitShaper:
        """The shaper under the controls now (changed: a seeded generator restarts at seed + `tag`)."""
        with self._lock:
            if self._shaper is None or self._controls_changed:
                if self._shaper is None:
                    self._shaper = LogitShaper(self.timeline.vocab, self.controls)
                else:
                    self._shaper.set_controls(self.controls)
                if self.controls.seed is not None:
                    self._rng = np.random.default_rng(self.controls.seed + (self._tag if tag is None else tag))
                self._controls_changed = False
            return self._shaper


def json_listener(stream) -> Listener:
    """One JSON object per line (`musebridge jam --log-json`)."""
    lock = threading.Lock()

    def write(rec: dict) -> None:
        with lock:
            stream.write(json.dumps(rec, default=str) + "\n")
            stream.flush()

    return write
