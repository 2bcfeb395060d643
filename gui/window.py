"""The main window: a thin shell over one `JamSession` (through `SessionHost`).

Every control maps onto a session call -- faders to `set_strength`, temperature, top-p,
min-p and the follow faders to `set_controls`, mode to `set_mode`, answer length and quantize to
`set_config`, Start/Stop/Panic/Answer-now to `start`/`stop`/`panic`/`trigger` -- and
everything shown is read back from the session: the roll, the meter's latency and
throughput figures and the clips from its `record` (`bridge/jam_record.py`), the clock from
`session.clock`. Nothing here decides anything musical.

This module assembles the window: the transport bar, the three columns, the status bar,
saved values, the frame tick and closing. The panels with wiring of their own are parts of
the same window object, each in its own module: `ports_panel` (MIDI), `generation_panel`,
`latency_panel`, `clips_panel` and `session_events` (what the host reports); the widgets
they build sit in `mixer`, `follow_panel`, `roll`, `clips` and `meter`.
"""

from __future__ import annotations

import time

from PyQt6.QtCore import QSettings, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QKeySequence, QShortcut
from PyQt6.QtWidgets import (QButtonGroup, QFrame, QGroupBox, QHBoxLayout, QLabel, QMainWindow, QPushButton,
                             QSplitter, QStatusBar, QToolButton, QVBoxLayout, QWidget)

from musebridge.bridge.config import MODE_NAMES, MODES

from . import settings as saved
from . import theme
from .clips_panel import ClipsPanelMixin
from .follow_panel import LABELS as FOLLOW_LABELS
from .follow_panel import FollowPanel
from .generation_panel import GenerationPanelMixin, _min_p_text
from .host import SessionHost, plain
from .jobs import GenerateJob
from .latency_panel import LatencyPanelMixin
from .mixer import Mixer
from .port_watch import PortWatcher
from .ports_panel import VIRTUAL_IN, VIRTUAL_OUT, PortsPanelMixin
from .roll import PianoRoll
from .session_events import SessionEventsMixin

STATE_WORDS = {"stopped": "stopped", "listening": "listening", "answering": "answering", "accompanying": "playing along"}


class MainWindow(PortsPanelMixin, GenerationPanelMixin, LatencyPanelMixin, ClipsPanelMixin,
                 SessionEventsMixin, QMainWindow):
    ports_listed = pyqtSignal(str, list, list, str)  # api, inputs, outputs, error ("" if none)

    def __init__(self, host: SessionHost, qsettings: QSettings, values: dict | None = None,
                 port_lister=None, job: GenerateJob | None = None, refresh_ms: int = 2000):
        super().__init__()
        self.host = host
        self.session = host.session
        self.qs = qsettings
        self.values = dict(values or saved.load(qsettings))
        self.port_lister = port_lister or PortWatcher()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.port_problem = ""
        self.error = ""
        self.backend = host.backend_name
        self._listing = False
        self._seen_tag = 0
        self._frozen_playhead: float | None = None
        self._meter_t = 0.0
        self._live_region: tuple[float, float, str] | None = None
        cfg = self.session.cfg
        self.job = job or GenerateJob(cfg.model, cfg.backend)
        self.job.progress.connect(self._job_progress)
        self.job.clip.connect(self._job_clip)
        self.job.done.connect(self._job_done)
        self.setWindowTitle("MuseBridge")
        self._build()
        self._load_values()
        host.event.connect(self._on_event)
        host.busy.connect(self._on_busy)
        host.failed.connect(self._on_failed)
        self.ports_listed.connect(self._ports_listed)
        self._shortcuts()
        self.ui_timer = QTimer(self)
        self.ui_timer.timeout.connect(self.tick)
        self.ui_timer.start(40)
        self.port_timer = QTimer(self)
        self.port_timer.timeout.connect(self.refresh_ports)
        if refresh_ms:
            self.port_timer.start(refresh_ms)
            QTimer.singleShot(0, self.refresh_ports)
        geo = qsettings.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1440, 880)
        self.tick()

    # --- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(10, 8, 10, 6)
        root.setSpacing(8)
        root.addWidget(self._transport())
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        split.addWidget(self._left())
        split.addWidget(self._centre())
        split.addWidget(self._right())
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([300, 820, 320])
        self.split = split
        root.addWidget(split, 1)
        self.setCentralWidget(central)
        sb = QStatusBar()
        self.st_ports = QLabel()
        self.st_clock = QLabel()
        self.st_error = QLabel()
        self.st_error.setStyleSheet(f"color: {theme.BAD};")
        self.st_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        sb.addWidget(self.st_ports)
        sb.addWidget(self.st_clock)
        sb.addWidget(self.st_error, 1)
        self.st_state = QLabel()
        sb.addPermanentWidget(self.st_state)
        self.setStatusBar(sb)

    def _transport(self) -> QWidget:
        bar = QFrame()
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        logo = QLabel("<span style='font-size:14pt; font-weight:700; color:#e8e9eb'>Muse</span>"
                      f"<span style='font-size:14pt; font-weight:700; color:{theme.ACCENT}'>Bridge</span>")
        lay.addWidget(logo)
        lay.addSpacing(12)
        self.start_btn = QPushButton("▶  Start")
        self.start_btn.setObjectName("start")
        self.start_btn.setCheckable(True)
        self.start_btn.setToolTip("Start / stop the jam (Space)")
        self.start_btn.clicked.connect(self.toggle_start)
        lay.addWidget(self.start_btn)
        self.panic_btn = QPushButton("■  Panic")
        self.panic_btn.setObjectName("panic")
        self.panic_btn.setToolTip("Silence every note now (Esc)")
        self.panic_btn.clicked.connect(self.panic)
        lay.addWidget(self.panic_btn)
        self.trigger_btn = QPushButton("Answer now")
        self.trigger_btn.setToolTip("End the phrase now (call and response) or play an answer (one-shot) (T)")
        self.trigger_btn.clicked.connect(self.trigger)
        lay.addWidget(self.trigger_btn)
        lay.addSpacing(14)
        mode_lab = QLabel("Mode")
        mode_lab.setObjectName("dim")
        lay.addWidget(mode_lab)
        self.mode_group = QButtonGroup(self)
        self.mode_group.setExclusive(True)
        seg = QHBoxLayout()
        seg.setSpacing(0)
        for i, m in enumerate(MODES):
            b = QToolButton()
            b.setText(MODE_NAMES[m].capitalize())
            b.setCheckable(True)
            b.setObjectName("segfirst" if i == 0 else "seglast" if i == len(MODES) - 1 else "segment")
            b.setToolTip({"call": "The model answers each phrase you play",
                          "accompany": "The model plays along while you play",
                          "oneshot": "The model plays an answer when you press Answer now"}[m] + f" ({i + 1})")
            self.mode_group.addButton(b, i)
            seg.addWidget(b)
        self.mode_group.idClicked.connect(lambda i: self.set_mode(MODES[i]))
        lay.addLayout(seg)
        lay.addStretch(1)
        self.clock_label = QLabel()
        self.clock_label.setObjectName("clock")
        self.clock_label.setToolTip("Following the DAW's MIDI clock when it runs; else the internal tempo")
        lay.addWidget(self.clock_label)
        self.state_label = QLabel()
        self.state_label.setMinimumWidth(110)
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.state_label)
        return bar

    def _left(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        lay.addWidget(self._midi_box())
        lay.addWidget(self._generation_box())
        lay.addWidget(self._latency_box())
        lay.addStretch(1)
        w.setMinimumWidth(270)
        w.setMaximumWidth(360)
        return w

    def _centre(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        rollbox = QGroupBox("Piano roll")
        rl = QVBoxLayout(rollbox)
        rl.setContentsMargins(6, 10, 6, 6)
        self.roll = PianoRoll()
        head = QHBoxLayout()
        head.setSpacing(4)
        tip = QLabel("wheel: scroll back through the jam · Ctrl+wheel: zoom")
        tip.setObjectName("dim")
        head.addWidget(tip, 1)
        for text, tiptext, fn in (("−", "Zoom out", lambda: self.roll.zoom(1 / 1.25)),
                                  ("+", "Zoom in", lambda: self.roll.zoom(1.25)),
                                  ("Fit", "Show the whole jam", self.roll.fit_all)):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tiptext)
            b.clicked.connect(fn)
            head.addWidget(b)
        self.follow_btn = QToolButton()
        self.follow_btn.setText("Follow")
        self.follow_btn.setCheckable(True)
        self.follow_btn.setChecked(True)
        self.follow_btn.setToolTip("Keep the playhead in view (F); scroll back to see earlier answers")
        self.follow_btn.toggled.connect(self.roll.set_follow)
        self.roll.follow_changed.connect(self.follow_btn.setChecked)
        head.addWidget(self.follow_btn)
        rl.addLayout(head)
        rl.addWidget(self.roll, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.setChildrenCollapsible(False)
        split.addWidget(rollbox)
        mix = QGroupBox("Instruments  ·  strength per family (right-click: MIDI learn)")
        ml = QVBoxLayout(mix)
        ml.setContentsMargins(6, 12, 6, 4)
        self.mixer = Mixer()
        self.mixer.changed.connect(self._strength_changed)
        self.mixer.learn.connect(self._learn)
        ml.addWidget(self.mixer)
        split.addWidget(mix)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setSizes([560, 220])
        self.vsplit = split
        lay.addWidget(split, 1)
        return w

    def _right(self) -> QWidget:
        w = QWidget()
        col = QVBoxLayout(w)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(8)
        col.addWidget(self._clips_box(), 1)
        self.follow = FollowPanel()
        self.follow.changed.connect(self._follow_changed)
        self.follow.learn.connect(self._learn_follow)
        col.addWidget(self.follow)
        w.setMinimumWidth(280)
        w.setMaximumWidth(420)
        return w

    def _shortcuts(self) -> None:
        keys = {Qt.Key.Key_Space: self.toggle_start, Qt.Key.Key_Escape: self.panic, Qt.Key.Key_T: self.trigger,
                Qt.Key.Key_F: lambda: self.follow_btn.toggle(), Qt.Key.Key_1: lambda: self.set_mode(MODES[0]),
                Qt.Key.Key_2: lambda: self.set_mode(MODES[1]), Qt.Key.Key_3: lambda: self.set_mode(MODES[2])}
        for key, fn in keys.items():
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(fn)
        QShortcut(QKeySequence("Ctrl+E"), self, activated=self.export_dialog)

    # --- saved values -> widgets -------------------------------------------------------------
    def _load_values(self) -> None:
        v = self.values
        s = self.session
        widgets = (self.api_box, self.temp[1], self.top_p[1], self.min_p[1], self.bars_box, self.quant[1], self.silence_box,
                   self.seed_box, self.bpm_box, self.var_n, self.family_box, self.style_box)
        for wdg in widgets:
            wdg.blockSignals(True)
        self.api_box.setCurrentText(s.cfg.api)
        self.temp[1].setValue(round(s.controls.temperature * 100))
        self.top_p[1].setValue(round(s.controls.top_p * 100))
        self.min_p[1].setValue(round(s.controls.min_p * 100))
        self.bars_box.setValue(s.cfg.bars)
        self.quant[1].setValue(round(s.cfg.quantize * 100))
        self.silence_box.setValue(s.cfg.silence_beats)
        self.seed_box.setValue(-1 if s.controls.seed is None else s.controls.seed)
        self.bpm_box.setValue(s.cfg.bpm)
        self.var_n.setValue(int(v.get("variations", 4)))
        self.family_box.setCurrentIndex(max(self.family_box.findData(s.cfg.in_family), 0))
        self.style_box.setCurrentIndex(max(self.style_box.findData(s.cfg.style), 0))
        for wdg in widgets:
            wdg.blockSignals(False)
        for lab, sl, fmt in ((self.temp[2], self.temp[1], "{:.2f}"), (self.top_p[2], self.top_p[1], "{:.2f}")):
            lab.setText(fmt.format(sl.value() / 100))
        self.quant[2].setText(f"{self.quant[1].value()}%")
        self.min_p[2].setText(_min_p_text(self.min_p[1].value()))
        self.follow.set_values(s.controls)
        mutes = set(v.get("mutes") or [])
        for fam, strip in self.mixer.strips.items():
            strip.mute.blockSignals(True)
            strip.mute.setChecked(fam in mutes)
            strip.mute.blockSignals(False)
            strip.set_strength(float((v.get("strengths") or {}).get(fam, 0.5)))  # the fader; a mute is on top
        self._rebuild_ports()
        self._show_mode(s.mode)
        self._show_ccs()

    def _remember(self, **values) -> None:
        self.values.update(values)
        saved.save(self.qs, values)

    # --- controls -> session -----------------------------------------------------------------
    def _strength_changed(self, family: str, value: float) -> None:
        self.session.set_strength(family, value)
        self._remember(strengths=self.mixer.strengths(), mutes=self.mixer.mutes())

    def _follow_changed(self, name: str, value: float) -> None:
        self.session.set_controls(**{name: value})
        self._remember(**{name: value})

    def _set_config(self, **changes) -> None:
        try:
            how = self.host.configure(**changes)
        except Exception as e:
            self.show_error(plain(e))
            return
        self._remember(**changes)
        if how == "restart":
            self.statusBar().showMessage("restarting the jam with the new setting…", 4000)

    def set_mode(self, mode: str) -> None:
        self._show_mode(mode)
        self._remember(mode=mode)
        self.host.configure(mode=mode)  # what a restart begins in
        self.session.set_mode(mode)  # running: at once; stopped: when the worker starts

    def _show_mode(self, mode: str) -> None:
        b = self.mode_group.button(MODES.index(mode))
        if b is not None and not b.isChecked():
            b.setChecked(True)
        self.trigger_btn.setText("Play answer" if mode == "oneshot" else "Answer now")
        self.trigger_btn.setEnabled(mode != "accompany")

    def _learn(self, family: str) -> None:
        self._learn_target(f"strength:{family}", theme.FAMILY_LABELS[family])

    def _learn_follow(self, name: str) -> None:
        self._learn_target(name, f"Follow {FOLLOW_LABELS[name].lower()}")

    def _learn_target(self, target: str, label: str) -> None:
        try:
            self.session.ccmap.learn(target)
        except Exception as e:
            self.show_error(plain(e))
            return
        self._show_ccs()
        where = "" if self.host.running else " (start the jam first: CCs arrive through the input port)"
        self.statusBar().showMessage(f"MIDI learn: move a knob or fader for {label}{where}", 8000)

    def _show_ccs(self) -> None:
        cc = self.session.ccmap
        for fam, strip in self.mixer.strips.items():
            target = f"strength:{fam}"
            strip.set_cc(cc.cc_for(target), learning=cc.learning == target)
        self.follow.show_ccs(cc)

    # --- transport ---------------------------------------------------------------------------
    def toggle_start(self) -> None:
        if not self.host.idle:
            self._show_running()
            return
        if self.host.running:
            self.host.stop()
        else:
            self.error = ""
            self.host.start()
        self._show_running()

    def panic(self) -> None:
        self.session.panic()
        self.statusBar().showMessage("panic: every note released", 3000)

    def trigger(self) -> None:
        if self.host.running:
            self.session.trigger()

    def _show_running(self) -> None:
        busy = self.host.state
        running = self.host.running
        self.start_btn.blockSignals(True)
        self.start_btn.setChecked(running or busy in ("starting", "restarting"))
        self.start_btn.blockSignals(False)
        self.start_btn.setText({"starting": "Loading…", "stopping": "Stopping…", "restarting": "Restarting…"}.get(
            busy, "■  Stop" if running else "▶  Start"))
        self.play_btn.setEnabled(running and bool(self.clips.selected_clips()))

    def show_error(self, msg: str) -> None:
        self.error = msg
        self._status()

    # --- the frame tick -------------------------------------------------------------------------
    @property
    def _playhead_now(self) -> float | None:
        if self.host.running:
            try:
                return self.session.playhead()
            except Exception:
                return None
        return self._frozen_playhead

    def tick(self) -> None:
        s = self.session
        running = self.host.running
        playhead = self._playhead_now
        since = (playhead if playhead is not None else 0.0) - 512
        bpb = s.cfg.beats_per_bar
        regions = [(a.start, a.end(bpb), f"#{a.tag}") for a in s.record.answers()]
        if self._live_region is not None:
            regions.append(self._live_region)
        self.roll.set_data(s.record.roll_snapshot(since), playhead, regions, bpb,
                           max_open=s.cfg.max_note_beats * (s.clock.bpm / s.cfg.bpm if running else 1.0))
        if running:
            bpm = s.clock.bpm
            self.clock_label.setText(f"{'DAW' if s.clock.following else 'INT'}  {bpm:6.1f} BPM  "
                                     f"{self._bar_beat(playhead, bpb)}")
        else:
            self.clock_label.setText(f"INT  {s.cfg.bpm:6.1f} BPM  {self._bar_beat(playhead, bpb)}")
        state = s.state if running else "stopped"
        colour = {"listening": theme.GOOD, "answering": theme.ACCENT, "accompanying": theme.ACCENT}.get(state, theme.DIM)
        self.state_label.setText(f"<span style='color:{colour}; font-weight:700; letter-spacing:1px'>"
                                 f"● {STATE_WORDS.get(state, state).upper()}</span>")
        now = time.monotonic()
        if self._meter_dirty() or (running and now - self._meter_t > 0.5):
            self._meter_t = now
            self.meter.show_numbers(self.meter_numbers())
        self._status()

    @staticmethod
    def _bar_beat(beat: float | None, bpb: int) -> str:
        if beat is None or beat < 0:
            return "  1.1"
        return f"{int(beat // bpb) + 1:3d}.{int(beat % bpb) + 1}"

    def _status(self) -> None:
        s = self.session
        cfg = s.cfg
        inp = cfg.in_port or VIRTUAL_IN
        out = cfg.out_port or VIRTUAL_OUT
        self.st_ports.setText(f"{inp}  →  {out}  ·  {cfg.api}")
        if self.host.running:
            self.st_clock.setText(f"following the DAW clock at {s.clock.bpm:.1f} BPM" if s.clock.following
                                  else f"internal clock at {s.clock.bpm:.1f} BPM (no MIDI clock from the DAW)")
        else:
            self.st_clock.setText("stopped — press Space to start")
        problems = [p for p in (self.error, self.port_problem) if p]
        self.st_error.setText("  ·  ".join(problems))
        text = f"{s.counts().notes_in} notes in · {len(s.record.answers())} answers"
        dropped = s.health().input_dropped
        if dropped:
            text += f" · {dropped} input message{'s' if dropped != 1 else ''} dropped"
        self.st_state.setText(text)

    # --- closing ------------------------------------------------------------------------------------
    def closeEvent(self, e) -> None:
        self.ui_timer.stop()
        self.port_timer.stop()
        self.job.cancel()
        self.qs.setValue("window/geometry", self.saveGeometry())
        self.qs.sync()
        self.host.shutdown()
        if isinstance(self.port_lister, PortWatcher):
            self.port_lister.close()
        super().closeEvent(e)
