"""The jam session: the one object `musebridge jam` and the app both drive.

Threads, and why each exists:
- the MIDI input callback (python-rtmidi's thread) only timestamps, filters and queues;
  clock and transport go straight to the clock follower;
- the worker owns the model timeline: it turns played notes into tokens as they
  arrive, notices phrase ends, and generates -- nothing else touches the KV cache;
- the scheduler's thread sends events at their time and tracks every note it sent.
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
from dataclasses import replace
from typing import Any, Callable, Iterable

import numpy as np

from musebridge.engine.music.events import Event, Note, NoteOff, NoteOn, Pedal
from musebridge.engine.music.families import FAMILIES, family_for_program
from musebridge.engine.music.midi_file import family_channels
from musebridge.engine.decode.sampling import LogitShaper
from musebridge.errors import MuseBridgeError

from .cc_map import CCMap
from .clock import ClockFollower, InternalClock
from .config import MODES, JamConfig
from .ranking import LIKELIHOOD, open_ranker
from .safety import DropCounters
from .scheduler import Scheduled, Scheduler
from .timeline import Timeline

Listener = Callable[[dict], None]
FLYWHEEL_S = 2.0  # a MIDI clock whose ticks stall this long is given up for the internal clock
REPLAY_TAG = -1  # scheduler tag of clips played again (an answer's cancel leaves them alone)


class SessionClock:
    """MIDI clock while it runs (unless told to ignore it), else the internal clock."""

    def __init__(self, cfg: JamConfig):
        self.cfg = cfg
        self.midi = ClockFollower(beats_per_bar=cfg.beats_per_bar)
        self.internal = InternalClock(cfg.bpm, beats_per_bar=cfg.beats_per_bar)
        self.internal.start()

    @property
    def active(self):
        """The MIDI clock from Start to Stop, even through a stall in its ticks (it flywheels
        on the last tempo, so positions never jump); the internal clock otherwise."""
        if self.cfg.clock != "internal" and self.midi.heard_within(FLYWHEEL_S):
            return self.midi
        return self.internal

    @property
    def following(self) -> bool:
        """Locked to a MIDI clock that is ticking now (for the status display)."""
        return self.active is self.midi and self.midi.running

    def beat_at(self, t: float) -> float:
        return self.active.beat_at(t)

    def time_at(self, beat: float) -> float:
        return self.active.time_at(beat)

    @property
    def bpm(self) -> float:
        return self.active.bpm


class JamSession:
    """Ports + clock + timeline + scheduler. `start()`, then play; `stop()` always releases."""

    def __init__(self, config: JamConfig, runtime=None, listener: Listener | None = None, ports: bool = True,
                 ccmap: CCMap | None = None):
        self.cfg = config.validate()
        self.ccmap = ccmap if ccmap is not None else CCMap()
        self._runtime = runtime
        self._ranker = None  # how candidate answers are ranked (opened with the runtime when candidates > 1)
        self.listeners: list[Listener] = [listener] if listener else []
        self._use_ports = ports
        self.inp = self.out = None
        self.clock = SessionClock(self.cfg)
        self.scheduler: Scheduler | None = None
        self.timeline: Timeline | None = None
        self.channels = family_channels([f.name for f in FAMILIES])
        self._in_programs = [0] * 16
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._batch: list[Event] = []  # played events not yet given to the model
        self._next_port_check = 0.0
        self.latency_comp_ms = self.cfg.latency_ms or 0.0
        self._lost_ports: set[str] = set()
        self.server_lost = False  # the JACK server died under the ports and has not returned (yet)
        self.controls = self.cfg.controls
        self._controls_changed = True
        self.mode = self.cfg.mode
        self.state = "stopped"  # stopped | listening | answering | accompanying
        self.origin = 0.0
        self.counters: dict[str, int] = {"ignored": 0, "notes_in": 0, "echo": 0, "answers": 0}
        # what the MIDI input threw away (garbage, sysex, rtmidi's queue overflowing): one
        # object for the session, so the counts outlive a reopened input port
        self.input_dropped = DropCounters()
        self._drops_reported = 0
        self._next_drop_report = 0.0
        self.latencies: dict[str, deque] = {"first_token_ms": deque(maxlen=500), "phrase_to_note_ms": deque(maxlen=500)}
        # generation speed: tokens per second, and seconds of music per second of compute
        self.throughput: dict[str, deque] = {"tokens_per_s": deque(maxlen=500), "realtime_x": deque(maxlen=500)}
        self.history: list[dict] = []  # finished answers (events in song beats), newest last
        self.error: str | None = None
        self._tag = 0
        self._open: dict[tuple[str, int], int] = {}  # model notes scheduled on, not off: -> note id
        self._answer: dict | None = None
        self._held: dict[tuple[int, int], float] = {}  # the player's keys down: -> beat pressed
        self._phrase_notes = 0
        self._last_input_beat = -math.inf
        self._phrase_end_t: float | None = None
        self._oneshot = threading.Event()
        self._committed: deque = deque(maxlen=4096)  # accompany: (beat, event) sent to the scheduler
        self._pending: list[Event] = []  # accompany: generated, not committed
        self._rng = np.random.default_rng(self.controls.seed)
        self._shaper: LogitShaper | None = None
        # the piano roll's view: recent notes in song beats, user's and model's (app polls it)
        self.roll: deque = deque(maxlen=2000)
        self._roll_open: dict[tuple, dict] = {}

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
            from .ports import MidiInput, MidiOutput

            self.out = MidiOutput(self.cfg.out_port, api=self.cfg.api)
            self.inp = MidiInput(self.cfg.in_port, api=self.cfg.api, callback=self._on_midi,
                                 dropped=self.input_dropped)
        send = self.out.send if self.out is not None else (lambda m: None)
        self.scheduler = Scheduler(send, self._time_at, late_s=self.cfg.late_ms / 1000,
                                   max_note_s=self.cfg.max_note_beats * 60.0 / self.cfg.bpm,
                                   latency_s=(self.cfg.latency_ms or 0.0) / 1000, on_sent=self._on_sent)
        self._new_timeline()
        self._send_programs()
        self.scheduler.start()
        self._stop.clear()
        self.state = "accompanying" if self.mode == "accompany" else "listening"
        self._worker = threading.Thread(target=self._work, name="musebridge-engine", daemon=True)
        self._worker.start()
        self.emit("ready", mode=self.mode, backend=getattr(self._runtime, "name", "?"),
                  input=getattr(self.inp, "name", None), output=getattr(self.out, "name", None),
                  clock="midi" if self.clock.following else "internal", bpm=round(self.clock.bpm, 2))

    def stop(self) -> None:
        """Stop generating, release every note, close the ports. Safe to call twice."""
        self._stop.set()
        self._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        if self.scheduler is not None:
            self.scheduler.stop()
            self._roll_released()
            a = self._answer
            if a is not None and (self._worker is None or not self._worker.is_alive()):
                self._finish_answer(cancelled=self._song_beat() - self.origin < a["end"])
            # the releases are queued in the MIDI driver: give it a few periods to deliver
            # them before the port closes (JACK drops what is queued at close)
            time.sleep(0.05)
        for port in (self.inp, self.out):
            if port is not None:
                try:
                    port.close()
                except Exception:
                    pass
        self.inp = self.out = None
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
            if self.scheduler is not None:
                self.scheduler.panic()
                self._roll_released()
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
        self.cfg = self.clock.cfg = cfg

    def replay(self, notes: Iterable[Note]) -> float:
        """Play finished notes (beats from 0) again from the next bar line, on the model's
        channels. Output only: the model does not hear them. Returns the song beat it starts on."""
        if self.scheduler is None or self.state == "stopped":
            raise MuseBridgeError("start the jam first: a clip plays again through the session's output")
        bpb = self.cfg.beats_per_bar
        now = self._song_beat() - self.origin + 0.03 * self.clock.bpm / 60.0
        start = math.floor(now / bpb + 1e-9) * bpb + bpb
        for n in notes:
            self.scheduler.note(start + n.start, start + max(n.end, n.start + 1 / 64), self.channels[n.family], n.pitch,
                                n.velocity, tag=REPLAY_TAG)
        return start + self.origin

    def stats(self) -> dict:
        sc = self.scheduler.jitter_stats() if self.scheduler else {}
        lat = {k: _pct(v) for k, v in self.latencies.items()}
        speed = {k: _pct(v) for k, v in self.throughput.items()}
        return {"jitter": sc, "latency": lat, "throughput": speed, "counters": dict(self.counters),
                "answers": len(self.history), "input_dropped": self.input_dropped.as_dict(),
                "lost_ports": sorted(self._lost_ports)}

    # --- MIDI in (rtmidi's thread) ------------------------------------------------------------
    def _on_midi(self, msg: bytes, t: float) -> None:
        if not msg:
            return
        status = msg[0]
        if status >= 0xF8 or status == 0xF2:
            if self.cfg.clock != "internal":
                was = self.midi_running
                self.clock.midi.feed(status, msg[1:], t)
                if status == 0xFC or (status in (0xFA, 0xFB) and not was):
                    self._queue.put(("transport", status))
            return
        kind = status & 0xF0
        ch = status & 0x0F
        if self.cfg.in_channel is not None and ch != self.cfg.in_channel - 1:
            return
        if kind in (0x80, 0x90) and self.out is not None and self.out.echo_of(msg):
            self.counters["echo"] += 1
            return
        if kind == 0x90 and msg[2] > 0 and self.state == "answering":
            self._cancel.set()  # the player barges in: stop the answer at once
        self._queue.put(("midi", (msg, t)))

    @property
    def midi_running(self) -> bool:
        return self.clock.midi.running

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
                self._report_drops()
                if self.mode in ("call", "oneshot"):
                    self._call_tick()
                elif self.mode == "accompany":
                    self._accompany_tick()
            except Exception as e:  # never die silently: say it, release, keep listening
                self.error = f"{type(e).__name__}: {e}"
                self.emit("error", message=self.error)
                if self.scheduler is not None:
                    self.scheduler.panic()
                    self._roll_released()
                try:
                    self._cancel_answer()  # with its answer_end: a take is never lost
                except Exception:
                    self._answer = None
                    self._reset_after_cancel()

    def _watch_ports(self) -> None:
        """Every half second: is each port still there? A lost one is retried until it returns."""
        now = time.monotonic()
        if now < self._next_port_check:
            return
        self._next_port_check = now + 0.5
        self._update_latency()
        if self._watch_server():
            return
        for role, port in (("output", self.out), ("input", self.inp)):
            if port is None or port.virtual:
                continue
            if role in self._lost_ports:
                try:
                    back = port.reconnect()
                except Exception:
                    back = False
                if back:
                    self._lost_ports.discard(role)
                    self.emit("port", role=role, name=port.name, state="connected")
                    if role == "output":
                        self._send_programs()
            elif not port.connected():
                self._lost_ports.add(role)
                if role == "output" and self.scheduler is not None:
                    self.scheduler.panic()  # whatever was sounding there is gone with the port
                    self._roll_released()
                self.emit("port", role=role, name=port.name, state="lost",
                          message=f"MIDI {role} {port.name!r} vanished; retrying every 0.5 s")

    def _report_drops(self) -> None:
        """At most every half second: an `input_dropped` event when the input lost more."""
        now = time.monotonic()
        if now < self._next_drop_report:
            return
        self._next_drop_report = now + 0.5
        total = self.input_dropped.total
        if total != self._drops_reported:
            self._drops_reported = total
            self.emit("input_dropped", total=total, **self.input_dropped.as_dict())

    def _watch_server(self) -> bool:
        """The JACK server under both ports died (or restarted): say so, forget everything
        scheduled (its note-offs cannot reach a dead server, and when it returns nothing
        from before may sound), and once it answers again re-create the ports, virtual or
        by name. True while the ports are down."""
        ports = [(role, p) for role, p in (("output", self.out), ("input", self.inp)) if p is not None]
        if not self.server_lost:
            if not any(p.server_lost() for _, p in ports):
                return False
            self.server_lost = True
            for _, p in ports:
                p.abandon_client()
            self._lost_ports.update(role for role, _ in ports)
            if self.scheduler is not None:
                self.scheduler.panic()
                self._roll_released()
            self._cancel_answer()
            self._release_held(self._song_beat() - self.origin)
            self.error = "the JACK server stopped: MIDI ports lost; waiting for it to return"
            self.emit("error", message=self.error, cause="port_lost")
            self.emit("port_lost", ports=[role for role, _ in ports])
            return True
        if not all(p.reopen() for _, p in ports if p.closed or p.server_lost()):
            return True
        self.server_lost = False
        self._lost_ports = {role for role, p in ports if not p.virtual and not p.connected()}
        self.error = None
        # `waiting`: ports by name whose peer is not back yet (a `port` event says when it is)
        self.emit("port_restored", ports=[role for role, _ in ports], input=getattr(self.inp, "name", None),
                  output=getattr(self.out, "name", None), waiting=sorted(self._lost_ports))
        self._send_programs()
        return False

    def _update_latency(self) -> None:
        """Auto latency compensation (latency_ms unset): a driver that delivers MIDI once per
        period (JACK) delays clock ticks by 0..P on the way in and our notes by 0..P on the
        way out, P/2 each on average. P shows as the spread of tick arrivals around the
        tempo line, so sending that much early puts notes back on the DAW's grid."""
        if self.scheduler is None:
            return
        self.scheduler.max_note_s = self.cfg.max_note_beats * 60.0 / max(self.clock.bpm, 1.0)  # follows the tempo
        if self.cfg.latency_ms is not None:
            return
        comp = 0.0
        if self.clock.following:
            comp = min(self.clock.midi.arrival_spread(), 0.006)
        self.scheduler.latency_s = comp
        self.latency_comp_ms = comp * 1000.0

    def _send_programs(self) -> None:
        if not self.cfg.program_changes or self.out is None:
            return
        for fam in FAMILIES:
            if not fam.is_drums:
                try:
                    self.out.send(bytes([0xC0 | self.channels[fam.name], fam.program]))
                except Exception:
                    return

    def _flush_input(self) -> None:
        """Everything played since the last flush goes into the model in one append: a flood
        of notes costs one chunked prefill, not one model call per note."""
        if self._batch:
            evs, self._batch = self._batch, []
            evs.sort(key=lambda e: e.time)
            self._user_events(evs, 0.0)

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "midi":
            self._midi_in(*arg)
            return
        self._flush_input()  # controls act after the notes that came before them
        if kind == "panic" or kind == "cancel":
            self._cancel_answer()
        elif kind == "mode":
            self._cancel_answer()
            if self.scheduler is not None:
                self.scheduler.panic()
                self._roll_released()
            self.mode = arg
            self.state = "accompanying" if arg == "accompany" else "listening"
            self.emit("mode", mode=arg)
        elif kind == "trigger":
            if self.mode == "oneshot" or self.mode == "call":
                self._answer_now(arg, on=self.cfg.answer_on if self.mode == "call" else "beat")
        elif kind == "transport":
            self._cancel_answer()
            if self.scheduler is not None:
                self.scheduler.panic()
                self._roll_released()
            if arg in (0xFA, 0xFB):
                self._rebase()
            self.emit("transport", status={0xFA: "start", 0xFB: "continue", 0xFC: "stop"}[arg])

    def _song_beat(self, t: float | None = None) -> float:
        return self.clock.beat_at(time.perf_counter() if t is None else t)

    def _time_at(self, timeline_beat: float) -> float:
        return self.clock.time_at(timeline_beat + self.origin)

    def _new_timeline(self) -> None:
        bpb = self.cfg.beats_per_bar
        self.origin = math.floor(self._song_beat() / bpb) * bpb
        fams = [self.cfg.in_family] + [f for f, s in self.controls.strengths.items() if s > 0.5]
        fams = [f for f in dict.fromkeys(fams) if self.controls.strengths.get(f, 0.5) > 0]
        self.timeline = Timeline(self._runtime, self.cfg.style, fams, self.cfg.beats_per_bar)

    def _rebase(self) -> None:
        """The song position jumped (DAW start/locate): keep the timeline going from its end,
        on a bar line, so the token stream never runs backwards."""
        bpb = self.cfg.beats_per_bar
        song = self._song_beat()
        tl_next_bar = math.ceil(self.timeline.time / bpb) * bpb
        song_bar = math.floor(song / bpb) * bpb
        self.origin = song_bar - tl_next_bar

    # --- input -----------------------------------------------------------------------------------
    def _family_of_channel(self, ch: int) -> str:
        if not hasattr(self, "_chan_family"):
            self._chan_family = {c: f for f, c in self.channels.items()}
        return self._chan_family.get(ch, "piano")

    def _family_of(self, ch: int) -> str:
        if ch == 9:
            return "drums"
        if self._in_programs[ch]:
            return family_for_program(self._in_programs[ch], ch).name
        return self.cfg.in_family

    def _midi_in(self, msg: bytes, t: float) -> None:
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == 0xC0 and len(msg) >= 2:
            self._in_programs[ch] = msg[1]
            return
        if kind == 0xB0 and len(msg) >= 3:
            if self.cfg.trigger_cc is not None and msg[1] == self.cfg.trigger_cc and msg[2] >= 64:
                self._handle("trigger", t)
            elif msg[1] == 64:
                self._batch.append(Pedal(self._beat_in(t), self._family_of(ch), msg[2] >= 64))
            elif msg[1] in (120, 123):  # the DAW's all-sound-off / all-notes-off: the keys are up
                self._release_held(self._beat_in(t), channel=ch)
            elif self.ccmap is not None:
                self._apply_cc(self.ccmap.handle(msg[1], msg[2]), t)
            return
        if kind not in (0x80, 0x90) or len(msg) < 3:
            self.counters["ignored"] += 1
            return
        pitch, vel = msg[1], msg[2]
        on = kind == 0x90 and vel > 0
        if on and self.cfg.trigger_note is not None and pitch == self.cfg.trigger_note:
            self._handle("trigger", t)
            return
        fam = self._family_of(ch)
        beat = self._beat_in(t)
        self._roll_note("user", fam, pitch, beat + self.origin, on, vel)
        if on:
            self.counters["notes_in"] += 1
            self._held[(ch, pitch)] = beat
            self._phrase_notes += 1
            ev: Event = NoteOn(beat, fam, pitch, vel)
        else:
            self._held.pop((ch, pitch), None)
            ev = NoteOff(beat, fam, pitch)
        self._last_input_beat = beat
        self._batch.append(ev)

    def _release_held(self, beat: float, channel: int | None = None, older_than: float | None = None) -> None:
        """Treat held keys as released (all-notes-off, or a note-off that never came)."""
        for (ch, pitch), b in list(self._held.items()):
            if (channel is None or ch == channel) and (older_than is None or b < older_than):
                del self._held[(ch, pitch)]
                self._batch.append(NoteOff(beat, self._family_of(ch), pitch))
                self._roll_note("user", self._family_of(ch), pitch, beat + self.origin, False)

    def _apply_cc(self, action, t: float) -> None:
        if action is None:
            return
        target, value = action
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

    def _beat_in(self, t: float) -> float:
        """A played time as a timeline beat, pulled towards the grid by `quantize`."""
        b = self._song_beat(t) - self.origin
        q = self.cfg.quantize
        if q > 0:
            g = self.cfg.grid
            b += q * (round(b / g) * g - b)
        return max(b, 0.0)

    def _user_events(self, events: list[Event], t: float) -> None:
        tl = self.timeline
        beat = events[0].time
        after: list[Event] = []
        if self.state == "answering" and any(isinstance(e, NoteOn) for e in events):
            self._barge_in(beat)
        elif self.mode == "accompany" and any(isinstance(e, NoteOn) for e in events):
            after = self._accompany_input(beat)  # (a release can land late: no need to regenerate)
        if tl.time - beat > 8 * self.cfg.beats_per_bar:
            self._rebase()  # a clock jump we missed: do not encode into the distant past
        tl.add(events)
        if after or (self.mode == "accompany" and any(isinstance(e, NoteOn) for e in events)):
            tl.mark()  # the next note the player plays can come back to here
        if after:
            tl.add(after, model=True)

    # --- call and response ---------------------------------------------------------------------
    def _call_tick(self) -> None:
        now = self._song_beat() - self.origin
        if self.state == "answering" and self._answer is not None and now >= self._answer["end"]:
            self._finish_answer()
        if self._held:  # a key "held" past the longest note lost its note-off: let it go
            self._release_held(now, older_than=now - self.cfg.max_note_beats)
        if self.mode != "call":
            return  # one-shot: answers end here, but only a trigger starts one
        if self.state != "listening" or self._phrase_notes == 0 or self._held:
            return
        if now - self._last_input_beat >= self.cfg.silence_beats:
            self._answer_now(time.perf_counter(), on=self.cfg.answer_on)
        elif now - self._last_input_beat >= self.cfg.silence_beats / 2:
            self.timeline.listen_ahead(now)  # the phrase is ending: hear it before the answer is due

    def _answer_now(self, t_end: float, on: str) -> None:
        """The phrase ended at perf time t_end: answer from the next bar (or beat) line."""
        self._cancel_answer()
        bpb = self.cfg.beats_per_bar
        unit = bpb if on == "bar" else 1.0
        margin = 0.03 * self.clock.bpm / 60.0  # the first token needs a few ms
        now = self._song_beat() - self.origin + margin
        start = max(math.floor(now / unit + 1e-9) * unit + unit, math.ceil(self.timeline.time / unit) * unit)
        if start - now > unit:  # the timeline ran ahead (e.g. a long answer): next line after it
            start = math.ceil(self.timeline.time / unit) * unit
        end = start + self.cfg.bars * bpb
        self._phrase_end_t = t_end
        self._tag += 1
        self._answer = {"tag": self._tag, "start": start, "end": end, "events": [], "ids": [], "sent": set(),
                        "first_sent": False,
                        "phrase_end_t": t_end, "controls": self.controls.to_dict()}
        self.state = "answering"
        self._phrase_notes = 0
        self.emit("phrase_end", start_beat=start + self.origin, bars=self.cfg.bars)
        self._cancel.clear()
        t_gen = time.perf_counter()
        if self.cfg.candidates > 1:  # rank what fits before the start (less what the first note needs)
            ranker = self._ranker or LIKELIHOOD
            deadline = self._time_at(start - margin) - self.scheduler.latency_s
            ans = self.timeline.generate_ranked(start, end, self._current_shaper(), self._rng, ranker.score,
                                                self.cfg.candidates, deadline, emit=self._schedule_model,
                                                cancelled=self._halted)
            self._answer["ranking"] = {"candidates": ans.made, "score_by": ranker.by,
                                       "score": round(ans.scores[ans.chosen], 4) if ans.scores else None}
            self._measure(ans, ans.sample_s / max(ans.made, 1), end - start)
        else:
            ans = self.timeline.generate(start, end, self._current_shaper(), self._rng, emit=self._schedule_model,
                                         cancelled=self._halted)
            self._measure(ans, time.perf_counter() - t_gen, end - start)
        if ans.first_token_s is not None:
            self.latencies["first_token_ms"].append((t_gen - t_end + ans.first_token_s) * 1000.0)
        self._answer["tokens"] = ans.tokens
        if ans.cancelled:
            self._cancel.clear()

    def _finish_answer(self, cancelled: bool = False) -> None:
        """End the current answer. Every answer that started (`phrase_end`) gets its
        `answer_end`; a cancelled one keeps, in the history (and so for `--save`), what of
        it actually sounded, marked cancelled: a take is never lost."""
        a = self._answer
        self._answer = None
        self.state = "listening" if self.mode != "accompany" else "accompanying"
        if a is None:
            return
        events = self._played_part(a, self._song_beat() - self.origin) if cancelled else a["events"]
        notes = sum(1 for e in events if isinstance(e, NoteOn))
        if not cancelled:
            self.counters["answers"] += 1
        if notes or not cancelled:  # a cancelled answer that never sounded leaves no take
            clip = {"tag": a["tag"], "start": a["start"] + self.origin, "bars": self.cfg.bars,
                    "bpm": round(self.clock.bpm, 3), "events": events, "controls": a["controls"],
                    "style": self.cfg.style, "cancelled": cancelled, **a.get("ranking", {})}
            self.history.append(clip)
            if len(self.history) > 200:
                del self.history[:100]
        self.emit("answer_end", tag=a["tag"], notes=notes, cancelled=cancelled, **a.get("ranking", {}))

    @staticmethod
    def _played_part(a: dict, cut: float) -> list[Event]:
        """What of answer `a` sounded: the notes whose note-on went out (`_on_sent`), each
        ended by `cut`, the timeline beat it was cancelled on (the cancel released it there)."""
        out: list[Event] = []
        sounding: dict[int, NoteOn] = {}
        for ev, nid in zip(a["events"], a["ids"]):
            if nid not in a["sent"]:
                continue
            if isinstance(ev, NoteOn):
                sounding[nid] = ev
                out.append(ev)
            elif sounding.pop(nid, None) is not None:
                out.append(ev if ev.time <= cut else NoteOff(cut, ev.family, ev.pitch))
        for on in sounding.values():
            out.append(NoteOff(max(cut, on.time), on.family, on.pitch))
        return sorted(out, key=lambda e: e.time)

    def _barge_in(self, beat: float) -> None:
        """The player plays over an answer: stop it there and keep what already sounded."""
        a = self._answer
        if a is None:
            return
        self.scheduler.cancel(tag=a["tag"])
        self._roll_released()
        self._open.clear()
        back = self.timeline.rewind(beat)
        if back is not None:
            played = [e for e in a["events"] if back <= e.time <= beat]
            self.timeline.add(played, model=True)
            self.timeline.release_model_notes(max(beat, self.timeline.time))
        a["events"] = [e for e in a["events"] if e.time <= beat]
        a["end"] = beat
        self._finish_answer()
        self._cancel.clear()

    def _cancel_answer(self) -> None:
        """Drop the current answer, releasing what of it sounds; it still ends (`answer_end`,
        cancelled unless it had played to its end)."""
        a = self._answer
        if a is not None and self.scheduler is not None:
            self.scheduler.cancel(tag=a["tag"])
            self._roll_released()
        if a is not None:
            self._finish_answer(cancelled=self._song_beat() - self.origin < a["end"])
        self._reset_after_cancel()

    def _reset_after_cancel(self) -> None:
        self._open.clear()
        self._pending.clear()
        if self.timeline is not None and self.timeline.model_sounding:
            self.timeline.release_model_notes(self.timeline.time)
        self._cancel.clear()
        self.state = "accompanying" if self.mode == "accompany" else "listening"

    # --- accompany -----------------------------------------------------------------------------
    def _accompany_tick(self) -> None:
        if self.state != "accompanying":
            return
        now = self._song_beat() - self.origin
        commit = now + self.cfg.lookahead_beats
        keep = []
        for ev in self._pending:  # commit what entered the window
            if ev.time <= commit:
                self._schedule_model(ev, commit=True)
            else:
                keep.append(ev)
        self._pending = keep
        tl = self.timeline
        if tl.time < now:  # fell behind (or just started): jump to the playhead
            tl.advance_to(math.ceil(now * 4) / 4)
        if tl.time < commit + 1.0:
            self._cancel.clear()
            t_gen = time.perf_counter()
            ans = tl.generate(tl.time, tl.time + 0.5, self._current_shaper(), self._rng, emit=self._pending.append,
                              cancelled=self._halted, first_note=False, close=False)
            self._measure(ans, time.perf_counter() - t_gen, 0.5)

    def _halted(self) -> bool:
        """Should generation stop at the next step? On cancel, and always once `stop()` began:
        a later trigger clears the cancel flag, never the stop flag, so stop wins over any backlog."""
        return self._cancel.is_set() or self._stop.is_set()

    def _measure(self, ans, seconds: float, beats: float) -> None:
        if ans.cancelled or ans.tokens == 0 or seconds <= 0:
            return
        self.throughput["tokens_per_s"].append(ans.tokens / seconds)
        self.throughput["realtime_x"].append(beats * 60.0 / self.clock.bpm / seconds)

    def _accompany_input(self, beat: float) -> list[Event]:
        """Regenerate what was not committed: rewind to before the player's note and put back
        the committed model notes up to it; returns the committed ones after it (the caller
        adds them after the player's events, keeping time order)."""
        self._pending.clear()
        back = self.timeline.rewind(beat)
        if back is None:
            return []
        committed = [e for _, e in self._committed if back <= e.time]
        self.timeline.add([e for e in committed if e.time <= beat], model=True)
        return [e for e in committed if e.time > beat]

    # --- model notes -> scheduler ---------------------------------------------------------------
    def _schedule_model(self, ev: Event, commit: bool = False) -> None:
        if not isinstance(ev, (NoteOn, NoteOff)):
            return
        with self._push_lock:
            if self._cancel.is_set() or self._stop.is_set():
                return  # cancelled meanwhile: its notes must not be scheduled
            self._push_model(ev, commit)

    def _push_model(self, ev: Event, commit: bool) -> None:
        tag = self._answer["tag"] if self._answer is not None else 0
        ch = self.channels[ev.family]
        key = (ev.family, ev.pitch)
        if isinstance(ev, NoteOn):
            if key in self._open:  # re-strike: the scheduler releases the old one first
                self._open.pop(key)
            nid = self.scheduler.new_note_id()
            self._open[key] = nid
            self.scheduler.push(Scheduled(ev.time, 0, "on", ch, ev.pitch, ev.velocity, nid, tag))
        else:
            nid = self._open.pop(key, None)
            if nid is None:
                return
            self.scheduler.push(Scheduled(ev.time, 0, "off", ch, ev.pitch, 0, nid, tag))
        if self._answer is not None:
            self._answer["events"].append(ev)
            self._answer["ids"].append(nid)
        if commit:
            self._committed.append((ev.time, ev))

    def _roll_note(self, src: str, family: str, pitch: int, beat: float, on: bool, velocity: int = 0) -> None:
        key = (src, family, pitch)
        if on:
            if key in self._roll_open:
                self._roll_open.pop(key)["off"] = beat
            note = {"src": src, "family": family, "pitch": pitch, "on": beat, "off": None, "velocity": velocity}
            self._roll_open[key] = note
            self.roll.append(note)
        elif key in self._roll_open:
            self._roll_open.pop(key)["off"] = beat

    def _roll_released(self) -> None:
        """The scheduler released the model's notes early (cancel, panic): end them in the roll too."""
        beat = self._song_beat()
        for key in [k for k in list(self._roll_open) if k[0] == "model"]:
            note = self._roll_open.pop(key, None)
            if note is not None and note["off"] is None:
                note["off"] = beat

    def roll_snapshot(self, since_beat: float = -math.inf) -> list[dict]:
        """Copies of the notes that end after `since_beat` (open notes have off=None)."""
        return [dict(n) for n in list(self.roll) if n["off"] is None or n["off"] >= since_beat]

    def playhead(self) -> float:
        """The song position now, in beats."""
        return self._song_beat()

    def _on_sent(self, it: Scheduled, due: float, sent_at: float) -> None:
        if it.kind in ("on", "off"):
            fam = self._family_of_channel(it.channel)
            self._roll_note("model", fam, it.pitch, self.clock.beat_at(sent_at), it.kind == "on", it.velocity)
        a = self._answer
        if it.kind == "on" and a is not None and it.tag == a["tag"]:
            a["sent"].add(it.note_id)  # what of it sounded, should it be cancelled
        if it.kind == "on" and a is not None and it.tag == a["tag"] and not a["first_sent"]:
            a["first_sent"] = True
            ms = (sent_at - a["phrase_end_t"]) * 1000.0
            self.latencies["phrase_to_note_ms"].append(ms)
            self.emit("answer_start", tag=a["tag"], beat=round(a["start"] + self.origin, 4),
                      error_ms=round((sent_at - due) * 1000.0, 3), phrase_to_note_ms=round(ms, 2),
                      first_token_ms=round(self.latencies["first_token_ms"][-1], 2) if self.latencies["first_token_ms"] else None)

    # --- sampling --------------------------------------------------------------------------------
    def _current_shaper(self) -> LogitShaper:
        with self._lock:
            if self._shaper is None or self._controls_changed:
                if self._shaper is None:
                    self._shaper = LogitShaper(self.timeline.vocab, self.controls)
                else:
                    self._shaper.set_controls(self.controls)
                if self.controls.seed is not None:
                    self._rng = np.random.default_rng(self.controls.seed + self._tag)
                self._controls_changed = False
            return self._shaper



def _pct(values) -> dict:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    a = np.array(values, float)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3), "n": len(a)}


def json_listener(stream) -> Listener:
    """One JSON object per line (`musebridge jam --log-json`)."""
    lock = threading.Lock()

    def write(rec: dict) -> None:
        with lock:
            stream.write(json.dumps(rec, default=str) + "\n")
            stream.flush()

    return write
