"""The Generation panel of the main window: style, temperature, top-p, min-p, answer length,
quantize, phrase gap, seed and internal tempo.

A part of `MainWindow` (a mixin: its widgets and handlers live on the window object, where the
tests reach them). Each control is one session call -- `set_controls` for the sampling
controls, the window's `_set_config` for the rest -- and is remembered with the settings.
"""

from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QSlider, QSpinBox,
                             QWidget)

from musebridge.engine.training.checkpoint import DEFAULT_MODEL, load_vocab


def _min_p_text(v: int) -> str:
    return "off" if v == 0 else f"{v / 100:.2f}"


class GenerationPanelMixin:
    """The Generation group box (`style_box`, `temp`, `top_p`, `min_p`, `bars_box`, `quant`,
    `silence_box`, `seed_box`, `bpm_box`) and its sampling controls -> session."""

    def _generation_box(self) -> QGroupBox:
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
        return gen

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

    def _temp_changed(self, v: int) -> None:
        self.session.set_controls(temperature=v / 100)
        self._remember(temperature=v / 100)

    def _top_p_changed(self, v: int) -> None:
        self.session.set_controls(top_p=v / 100)
        self._remember(top_p=v / 100)

    def _min_p_changed(self, v: int) -> None:
        self.session.set_controls(min_p=v / 100)
        self._remember(min_p=v / 100)

    def _seed_changed(self, v: int) -> None:
        seed = None if v < 0 else v
        self.session.set_controls(seed=seed)
        self._remember(seed=seed)
