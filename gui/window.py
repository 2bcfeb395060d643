"""The main window: a thin shell over one `JamSession` (through `SessionHost`).

Every control maps onto a session call -- faders to `set_strength`, temperature, top-p,
min-p and the follow faders to `set_controls`, mode to `set_mode`, answer length and quantize to
`set_config`, Start/Stop/Panic/Answer-now to `start`/`stop`/`panic`/`trigger` -- and
everything shown is read back from the session: the roll from `roll_snapshot()`, the
clock from `session.clock`, the meter from its latency and throughput figures, the clips
from `history`. Nothing here decides anything musical.
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path

from PyQt6.QtCore import QSettings, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QKeySequence, QShortcut
from PyQt6.QtWidgets import (QButtonGroup, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QFrame, QGroupBox,
                             QHBoxLayout, QLabel, QMainWindow, QProgressBar, QPushButton, QSlider, QSpinBox,
                             QSplitter, QStatusBar, QToolButton, QVBoxLayout, QWidget)

from musebridge.bridge.config import MODE_NAMES, MODES
from musebridge.bridge.ports import API_CHOICES
from musebridge.engine.checkpoint import DEFAULT_MODEL, load_vocab
from musebridge.engine.families import FAMILIES
from musebridge.engine.sampling import SamplingControls

from . import settings as saved
from . import theme
from .clips import Clip, ClipList, clip_from_answer, phrase_before
from .follow_panel import LABELS as FOLLOW_LABELS
from .follow_panel import FollowPanel
from .host import SessionHost, plain
from .jobs import GenerateJob
from .meter import LatencyMeter
from .mixer import Mixer
from .port_watch import PortWatcher
from .roll import PianoRoll

VIRTUAL_IN, VIRTUAL_OUT = "MuseBridge In (virtual)", "MuseBridge Out (virtual)"
STATE_WORDS = {"stopped": "stopped", "listening": "listening", "answering": "answering", "accompanying": "playing along"}


def _own(name: str) -> bool:
    """Our own virtual ports show in the lists too: never offer MuseBridge to itself."""
    return "musebridge" in name.lower()


def _match(name: str, ports: list[str]) -> str | None:
    """The port `name` opens, matched as the ports module does: exactly, else a unique
    case-insensitive part of one name."""
    if name in ports:
        return name
    hits = [p for p in ports if name.lower() in p.lower()]
    return hits[0] if len(hits) == 1 else None


def _min_p_text(v: int) -> str:
    return "off" if v == 0 else f"{v / 100:.2f}"


class MainWindow(QMainWindow):
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
        midi = QGroupBox("MIDI")
        f = QFormLayout(midi)
        f.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.api_box = QComboBox()
        self.api_box.addItems(API_CHOICES)
        self.api_box.setToolTip("The MIDI system (auto: the platform's own; JACK where there is no ALSA sequencer)")
        self.api_box.currentTextChanged.connect(self._api_changed)
        self.in_box = QComboBox()
        self.in_box.setToolTip("Where your playing comes from (your controller, or the DAW's MIDI out)")
        self.in_box.activated.connect(lambda _: self._port_chosen("in_port", self.in_box))
        self.out_box = QComboBox()
        self.out_box.setToolTip("Where the model's notes go (a DAW track's MIDI input, or a synth)")
        self.out_box.activated.connect(lambda _: self._port_chosen("out_port", self.out_box))
        self.family_box = QComboBox()
        for fam in FAMILIES:
            self.family_box.addItem(theme.FAMILY_LABELS[fam.name], fam.name)
        self.family_box.setToolTip("What the model hears your notes as (channel 10 is always drums)")
        self.family_box.activated.connect(lambda _: self._set_config(in_family=self.family_box.currentData()))
        f.addRow("API", self.api_box)
        f.addRow("Input", self.in_box)
        f.addRow("Output", self.out_box)
        f.addRow("You play", self.family_box)
        lay.addWidget(midi)

        gen = QGroupBox("Generation")
        g = QFormLayout(gen)
        g.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.style_box = QComboBox()
        self.style_box.addItem("any style", None)
        try:
            styles = [s for s in load_vocab(self.session.cfg.model or DEFAULT_MODEL).styles if s != "unknown"]
        except Exception:
            styles = []
        for s in styles:
            self.style_box.addItem(s.replace("_", " "), s)
        self.style_box.setMaxVisibleItems(20)
        self.style_box.setToolTip("The style the model leans towards (changing it restarts a running jam)")
        self.style_box.activated.connect(lambda _: self._set_config(style=self.style_box.currentData()))
        g.addRow("Style", self.style_box)
        self.temp = self._slider(20, 200, lambda v: f"{v / 100:.2f}", self._temp_changed,
                                 "Temperature: lower is safer, higher is wilder (1.00 is the model as trained)")
        g.addRow("Temperature", self.temp[0])
        self.top_p = self._slider(50, 100, lambda v: f"{v / 100:.2f}", self._top_p_changed,
                                  "Top-p: sample only from the most likely notes that make up this much probability")
        g.addRow("Top-p", self.top_p[0])
        self.min_p = self._slider(0, 50, _min_p_text, self._min_p_changed,
                                  "Min-p: drop notes less likely than this share of the likeliest one (off: 0; try 0.02-0.10)")
        g.addRow("Min-p", self.min_p[0])
        self.bars_box = QDoubleSpinBox()
        self.bars_box.setRange(0.5, 16)
        self.bars_box.setSingleStep(0.5)
        self.bars_box.setDecimals(1)
        self.bars_box.setSuffix(" bars")
        self.bars_box.setToolTip("How long each answer is")
        self.bars_box.valueChanged.connect(lambda v: self._set_config(bars=float(v)))
        g.addRow("Answer", self.bars_box)
        self.quant = self._slider(0, 100, lambda v: f"{v}%", lambda v: self._set_config(quantize=v / 100),
                                  "How far your notes are pulled to the 16th grid before the model hears them")
        g.addRow("Quantize", self.quant[0])
        self.silence_box = QDoubleSpinBox()
        self.silence_box.setRange(0.25, 16)
        self.silence_box.setSingleStep(0.5)
        self.silence_box.setSuffix(" beats")
        self.silence_box.setToolTip("Call and response: this much silence ends your phrase")
        self.silence_box.valueChanged.connect(lambda v: self._set_config(silence_beats=float(v)))
        g.addRow("Phrase gap", self.silence_box)
        self.seed_box = QSpinBox()
        self.seed_box.setRange(-1, 999_999)
        self.seed_box.setSpecialValueText("random")
        self.seed_box.setToolTip("Same seed, same answer to the same phrase (random: a new one each time)")
        self.seed_box.valueChanged.connect(self._seed_changed)
        g.addRow("Seed", self.seed_box)
        self.bpm_box = QDoubleSpinBox()
        self.bpm_box.setRange(20, 400)
        self.bpm_box.setDecimals(1)
        self.bpm_box.setSuffix(" BPM")
        self.bpm_box.setToolTip("Tempo used while no MIDI clock arrives from the DAW")
        self.bpm_box.valueChanged.connect(lambda v: self._set_config(bpm=float(v)))
        g.addRow("Internal", self.bpm_box)
        lay.addWidget(gen)

        lat = QGroupBox("Latency")
        ll = QVBoxLayout(lat)
        self.meter = LatencyMeter()
        ll.addWidget(self.meter)
        lay.addWidget(lat)
        lay.addStretch(1)
        w.setMinimumWidth(270)
        w.setMaximumWidth(360)
        return w

    def _slider(self, lo: int, hi: int, fmt, on_change, tip: str):
        box = QWidget()
        h = QHBoxLayout(box)
        h.setContentsMargins(0, 0, 0, 0)
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(lo, hi)
        s.setToolTip(tip)
        lab = QLabel(fmt(lo))
        lab.setObjectName("value")
        lab.setMinimumWidth(38)
        lab.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        def changed(v):
            lab.setText(fmt(v))
            on_change(v)

        s.valueChanged.connect(changed)
        h.addWidget(s, 1)
        h.addWidget(lab)
        return box, s, lab

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

    def _clips_box(self) -> QWidget:
        box = QGroupBox("Clips")
        lay = QVBoxLayout(box)
        lay.setSpacing(6)
        hint = QLabel("Every answer lands here. Drag one into your DAW.")
        hint.setObjectName("dim")
        hint.setWordWrap(True)
        lay.addWidget(hint)
        self.clips = ClipList()
        self.clips.itemSelectionChanged.connect(self._clip_selection)
        self.clips.itemDoubleClicked.connect(lambda _: self.play_clip())
        lay.addWidget(self.clips, 1)
        row = QHBoxLayout()
        self.play_btn = QPushButton("Play")
        self.play_btn.setToolTip("Play the clip again from the next bar, through MuseBridge's output")
        self.play_btn.clicked.connect(self.play_clip)
        self.regen_btn = QPushButton("Regenerate")
        self.regen_btn.setToolTip("Answer the same phrase again with a new seed")
        self.regen_btn.clicked.connect(self.regenerate_clip)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Save as .mid: one track per instrument, GM programs, tempo, seed and settings (Ctrl+E)")
        self.export_btn.clicked.connect(self.export_dialog)
        for b in (self.play_btn, self.regen_btn, self.export_btn):
            row.addWidget(b)
        lay.addLayout(row)
        var = QHBoxLayout()
        self.var_btn = QPushButton("Variations")
        self.var_btn.setToolTip("Generate several answers to your last phrase (ranked by the critic when the model has one)")
        self.var_btn.clicked.connect(self.variations)
        self.var_n = QSpinBox()
        self.var_n.setRange(2, 16)
        self.var_n.setPrefix("× ")
        self.var_n.valueChanged.connect(lambda v: self._remember(variations=v))
        var.addWidget(self.var_btn, 1)
        var.addWidget(self.var_n)
        lay.addLayout(var)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self._clip_selection()
        return box

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

    def _temp_changed(self, v: int) -> None:
        self.session.set_controls(temperature=v / 100)
        self._remember(temperature=v / 100)

    def _top_p_changed(self, v: int) -> None:
        self.session.set_controls(top_p=v / 100)
        self._remember(top_p=v / 100)

    def _min_p_changed(self, v: int) -> None:
        self.session.set_controls(min_p=v / 100)
        self._remember(min_p=v / 100)

    def _follow_changed(self, name: str, value: float) -> None:
        self.session.set_controls(**{name: value})
        self._remember(**{name: value})

    def _seed_changed(self, v: int) -> None:
        seed = None if v < 0 else v
        self.session.set_controls(seed=seed)
        self._remember(seed=seed)

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

    def _on_busy(self, state: str) -> None:
        self._show_running()
        if not state and self.host.running:
            self.error = "" if not self.error.startswith("start") else self.error

    def _on_failed(self, msg: str) -> None:
        self.show_error(f"could not start: {msg}")
        self._show_running()

    def _show_running(self) -> None:
        busy = self.host.state
        running = self.host.running
        self.start_btn.blockSignals(True)
        self.start_btn.setChecked(running or busy in ("starting", "restarting"))
        self.start_btn.blockSignals(False)
        self.start_btn.setText({"starting": "Loading…", "stopping": "Stopping…", "restarting": "Restarting…"}.get(
            busy, "■  Stop" if running else "▶  Start"))
        self.play_btn.setEnabled(running and bool(self.clips.selected_clips()))

    # --- ports --------------------------------------------------------------------------------
    def _api_changed(self, api: str) -> None:
        self._set_config(api=api)
        self.inputs, self.outputs = [], []
        self.refresh_ports()

    def refresh_ports(self) -> None:
        """List ports in a thread (a MIDI system can be slow to answer); the result comes back as a signal."""
        if self._listing:
            return
        self._listing = True
        api = self.session.cfg.api
        lister = self.port_lister

        def run():
            try:
                ins, outs = lister(api)
                self.ports_listed.emit(api, list(ins), list(outs), "")
            except Exception as e:
                self.ports_listed.emit(api, [], [], plain(e))

        threading.Thread(target=run, name="musebridge-ports", daemon=True).start()

    def _ports_listed(self, api: str, ins: list, outs: list, err: str) -> None:
        self._listing = False
        if api != self.session.cfg.api:
            return
        if err:
            self.port_problem = f"MIDI API {api}: {err}"
            self.inputs, self.outputs = [], []
        else:
            self.inputs = [p for p in ins if not _own(p)]
            self.outputs = [p for p in outs if not _own(p)]
            gone = [f"{what} port “{name}” is gone" for what, name, have in
                    (("input", self.session.cfg.in_port, self.inputs), ("output", self.session.cfg.out_port, self.outputs))
                    if name is not None and _match(name, have) is None]
            self.port_problem = ("; ".join(gone) + " — plug it back in or pick another") if gone else ""
        self._rebuild_ports()
        self._status()

    def _rebuild_ports(self) -> None:
        cfg = self.session.cfg
        for box, ports, current, virtual in ((self.in_box, self.inputs, cfg.in_port, VIRTUAL_IN),
                                             (self.out_box, self.outputs, cfg.out_port, VIRTUAL_OUT)):
            box.blockSignals(True)
            box.clear()
            box.addItem(virtual, None)
            for p in ports:
                box.addItem(p, p)
            match = None if current is None else _match(current, ports)
            if current is not None and match is None:
                box.addItem(f"{current}  (missing)", current)
            box.setCurrentIndex(max(box.findData(match or current), 0))
            box.blockSignals(False)

    def _port_chosen(self, key: str, box: QComboBox) -> None:
        self._set_config(**{key: box.currentData()})
        self.refresh_ports()

    # --- events from the session (GUI thread) -----------------------------------------------------
    def _on_event(self, rec: dict) -> None:
        ev = rec.get("event")
        if ev == "ready":
            self.backend = rec.get("backend") or self.backend
            self.error = ""
        elif ev == "error":
            self.show_error(rec.get("message", "error"))
        elif ev == "phrase_end":
            bpb = self.session.cfg.beats_per_bar
            start = float(rec.get("start_beat", 0.0))
            self._live_region = (start, start + float(rec.get("bars", 0)) * bpb, "playing")
        elif ev == "answer_end":
            self._live_region = None
            self.sync_history()
        elif ev in ("panic", "stopped", "error", "transport"):
            self._live_region = None
        elif ev == "mode":
            self._show_mode(rec.get("mode", self.session.mode))
        elif ev == "control":
            self._control_from_cc(rec.get("control", ""), rec.get("value"))
        elif ev == "midi_learn":
            self._show_ccs()
            self.statusBar().showMessage(f"learned: CC {rec.get('cc')} → {rec.get('control')}", 5000)
        elif ev == "transport":
            self.statusBar().showMessage(f"DAW transport: {rec.get('status')}", 3000)
        elif ev == "stopped":
            self._frozen_playhead = self._playhead_now
        self._show_running()
        self._status()

    def _control_from_cc(self, control: str, value) -> None:
        if control.startswith("strength:"):
            strip = self.mixer.strips.get(control.split(":", 1)[1])
            if strip is not None:
                strip.set_strength(float(value))
        elif control in self.follow.faders:
            self.follow.faders[control].set_value(float(value))
        elif control == "temperature":
            self.temp[1].blockSignals(True)
            self.temp[1].setValue(round(float(value) * 100))
            self.temp[2].setText(f"{float(value):.2f}")
            self.temp[1].blockSignals(False)
        elif control == "top_p":
            self.top_p[1].blockSignals(True)
            self.top_p[1].setValue(round(float(value) * 100))
            self.top_p[2].setText(f"{float(value):.2f}")
            self.top_p[1].blockSignals(False)

    def show_error(self, msg: str) -> None:
        self.error = msg
        self._status()

    # --- clips ---------------------------------------------------------------------------------
    def sync_history(self) -> None:
        """New answers in the session's history become clips (with the phrase they answer)."""
        s = self.session
        bpb = s.cfg.beats_per_bar
        notes = s.roll_snapshot()
        hist = list(s.history)
        for i, rec in enumerate(hist):
            if rec.get("tag", 0) <= self._seen_tag:
                continue
            prev_end = -math.inf
            if i > 0:
                prev_end = hist[i - 1]["start"] + hist[i - 1]["bars"] * bpb
            prompt = phrase_before(notes, rec["start"], bpb, rec.get("bpm", 120.0), after=prev_end)
            clip = clip_from_answer(rec, bpb, prompt, model=s.cfg.model)
            self.clips.add_clip(clip)
            self._seen_tag = rec["tag"]
            if not self.clips.selectedItems():  # never take a clip out of the player's hands
                self.clips.select(clip)

    def _clip_selection(self) -> None:
        have = bool(self.clips.selected_clips())
        self.play_btn.setEnabled(have and self.host.running)
        self.regen_btn.setEnabled(have and not self.job.running)
        self.export_btn.setEnabled(have)

    def play_clip(self) -> None:
        clip = self.clips.current_clip()
        if clip is None:
            return
        try:
            beat = self.session.replay(clip.notes)
        except Exception as e:
            self.show_error(plain(e))
            return
        bpb = self.session.cfg.beats_per_bar
        self.statusBar().showMessage(f"playing {clip.label} from bar {int(beat // bpb) + 1}", 4000)

    def export_clip(self, clip: Clip, path: str | Path) -> Path:
        out = clip.export(path)
        self.statusBar().showMessage(f"exported {clip.label} to {out}", 5000)
        return out

    def export_dialog(self) -> None:
        chosen = self.clips.selected_clips()
        if not chosen:
            return
        last = str(self.values.get("export_dir") or Path.home())
        try:
            if len(chosen) == 1:
                path, _ = QFileDialog.getSaveFileName(self, "Export clip", str(Path(last) / chosen[0].file_name()),
                                                      "MIDI files (*.mid)")
                if path:
                    self.export_clip(chosen[0], path if path.endswith(".mid") else path + ".mid")
                    self.values["export_dir"] = str(Path(path).parent)
            else:
                folder = QFileDialog.getExistingDirectory(self, "Export clips to", last)
                if folder:
                    for c in chosen:
                        self.export_clip(c, Path(folder) / c.file_name())
                    self.values["export_dir"] = folder
        except Exception as e:
            self.show_error(plain(e))

    def _controls_now(self, seed: int | None = None) -> SamplingControls:
        return self.session.controls.with_(seed=seed)

    def last_phrase(self):
        """What the player played last: their notes since the latest answer that ended before it."""
        s = self.session
        bpb = s.cfg.beats_per_bar
        notes = s.roll_snapshot()
        mine = [n for n in notes if n["src"] == "user"]
        if not mine:
            return None
        last_on = max(n["on"] for n in mine)
        ends = [h["start"] + h["bars"] * bpb for h in s.history]
        after = max((e for e in ends if e <= last_on), default=-math.inf)
        return phrase_before(notes, last_on + 1e-6, bpb, s.clock.bpm, after=after)

    def variations(self) -> None:
        prompt = self.last_phrase()
        if prompt is None or not prompt.notes:
            self.show_error("play a phrase first: variations answer your last phrase")
            return
        s = self.session
        n = self.var_n.value()
        self._start_job(prompt, n, s.cfg.bars, self._controls_now(s.controls.seed), s.cfg.style, "variation", "V")

    def regenerate_clip(self) -> None:
        clip = self.clips.current_clip()
        if clip is None:
            return
        from musebridge.engine.events import Piece

        try:  # every control the clip was made with (a clip from an older version: the rest at their defaults)
            controls = SamplingControls.from_dict(clip.controls).with_(seed=random.randrange(1, 1_000_000))
        except Exception as e:
            self.show_error(plain(e))
            return
        self._start_job(clip.prompt or Piece(), 1, clip.bars, controls, clip.style, "regenerated", f"{clip.label}′")

    def _start_job(self, prompt, n, bars, controls, style, source, label) -> None:
        s = self.session
        if not self.job.start(prompt, n, bars, controls, style, s.cfg.beats_per_bar, s.clock.bpm, source, label):
            self.statusBar().showMessage("already generating", 3000)
            return
        self.progress.setVisible(True)
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.var_btn.setEnabled(False)
        self.regen_btn.setEnabled(False)

    def _job_progress(self, done: int, total: int, what: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(what)

    def _job_clip(self, clip: Clip) -> None:
        self.clips.add_clip(clip)
        if not self.clips.selectedItems():
            self.clips.select(clip)

    def _job_done(self, clips: list, err: str) -> None:
        self.var_btn.setEnabled(True)
        self._clip_selection()
        if err:
            self.progress.setFormat("failed")
            self.show_error(f"generation failed: {err}")
            return
        ranked = ""
        if len(clips) > 1 and all(c.critic is not None for c in clips):
            clips[0].best = True
            self.clips.rank(clips)
            ranked = " (ranked by the critic)"
        self.progress.setFormat(f"{len(clips)} ready{ranked}")

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
        regions = [(h["start"], h["start"] + h["bars"] * bpb, f"#{h['tag']}") for h in list(s.history)]
        if self._live_region is not None:
            regions.append(self._live_region)
        self.roll.set_data(s.roll_snapshot(since), playhead, regions, bpb,
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

    def _meter_dirty(self) -> bool:
        n = len(self.session.latencies["first_token_ms"]) + len(getattr(self.session, "throughput", {}).get("tokens_per_s", ()))
        dirty = n != getattr(self, "_meter_n", -1)
        self._meter_n = n
        return dirty

    @staticmethod
    def _bar_beat(beat: float | None, bpb: int) -> str:
        if beat is None or beat < 0:
            return "  1.1"
        return f"{int(beat // bpb) + 1:3d}.{int(beat % bpb) + 1}"

    def meter_numbers(self) -> dict:
        s = self.session
        tp = getattr(s, "throughput", {})
        jit = None
        if s.scheduler is not None:
            try:
                jit = s.scheduler.jitter_stats().get("p99_ms")
            except Exception:
                jit = None
        return {"phrase_to_note_ms": list(s.latencies["phrase_to_note_ms"]),
                "first_token_ms": list(s.latencies["first_token_ms"]),
                "tokens_per_s": list(tp.get("tokens_per_s", ())), "realtime_x": list(tp.get("realtime_x", ())),
                "backend": self.backend, "jitter_p99_ms": jit}

    def _status(self) -> None:
        s = self.session
        cfg = s.cfg
        inp = cfg.in_port or "MuseBridge In (virtual)"
        out = cfg.out_port or "MuseBridge Out (virtual)"
        self.st_ports.setText(f"{inp}  →  {out}  ·  {cfg.api}")
        if self.host.running:
            self.st_clock.setText(f"following the DAW clock at {s.clock.bpm:.1f} BPM" if s.clock.following
                                  else f"internal clock at {s.clock.bpm:.1f} BPM (no MIDI clock from the DAW)")
        else:
            self.st_clock.setText("stopped — press Space to start")
        problems = [p for p in (self.error, self.port_problem) if p]
        self.st_error.setText("  ·  ".join(problems))
        c = s.counters
        text = f"{c.get('notes_in', 0)} notes in · {len(s.history)} answers"
        dropped = s.input_dropped.total  # garbage, sysex and queue overflows the input threw away
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
