"""The instrument mixer: one strength fader and mute per family.

A fader is the family's strength, 0-100 % (50 % neutral, 100 % strongly favoured, 0 off):
every move goes straight to `session.set_strength`, which the engine applies between two
sampling steps. Mute sends 0 and un-mute restores the fader. Right-click -> MIDI learn
binds the next CC that arrives to the fader (`session.ccmap.learn`).
"""

from __future__ import annotations

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMenu, QSlider, QToolButton, QVBoxLayout, QWidget

from musebridge.engine.music.families import FAMILIES

from . import theme


class FamilyStrip(QWidget):
    changed = pyqtSignal(str, float)  # family, effective strength (0 when muted)
    learn = pyqtSignal(str)  # family

    def __init__(self, family: str, parent=None):
        super().__init__(parent)
        self.family = family
        colour = theme.FAMILY_COLOURS[family]
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 0, 2, 0)
        lay.setSpacing(3)
        bar = QFrame()
        bar.setFixedHeight(3)
        bar.setStyleSheet(f"background: {colour}; border-radius: 1px;")
        lay.addWidget(bar)
        self.name = QLabel(theme.FAMILY_LABELS[family])
        self.name.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.name.setStyleSheet(f"color: {colour}; font-weight: 600; font-size: 8pt;")
        lay.addWidget(self.name)
        self.slider = QSlider(Qt.Orientation.Vertical)
        self.slider.setRange(0, 100)
        self.slider.setValue(50)
        self.slider.setPageStep(10)
        self.slider.setTickPosition(QSlider.TickPosition.NoTicks)
        self.slider.setMinimumHeight(60)
        self.slider.setStyleSheet(f"QSlider::add-page:vertical {{ background: {colour}; border-radius: 2px; }}")
        self.slider.valueChanged.connect(self._moved)
        lay.addWidget(self.slider, 1, Qt.AlignmentFlag.AlignHCenter)
        self.value = QLabel("50%")
        self.value.setObjectName("value")
        self.value.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        lay.addWidget(self.value)
        self.mute = QToolButton()
        self.mute.setObjectName("mute")
        self.mute.setText("M")
        self.mute.setCheckable(True)
        self.mute.setToolTip(f"Mute {theme.FAMILY_LABELS[family]}: the model never plays it")
        self.mute.toggled.connect(self._muted)
        self.mute.setFixedWidth(30)
        lay.addWidget(self.mute, 0, Qt.AlignmentFlag.AlignHCenter)
        self.cc = QLabel("")
        self.cc.setObjectName("dim")
        self.cc.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.cc.setStyleSheet("font-size: 7pt;")
        lay.addWidget(self.cc)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.setToolTip(f"{theme.FAMILY_LABELS[family]} strength: 50 % neutral, 100 % favoured, 0 off.\n"
                        "Right-click: MIDI learn")

    @property
    def strength(self) -> float:
        return 0.0 if self.mute.isChecked() else self.slider.value() / 100.0

    def set_strength(self, value: float, emit: bool = False) -> None:
        """Show a strength that came from elsewhere (a CC, saved settings)."""
        self.slider.blockSignals(not emit)
        self.slider.setValue(round(value * 100))
        self.slider.blockSignals(False)
        self._show()
        if emit:
            self.changed.emit(self.family, self.strength)

    def set_cc(self, cc: int | None, learning: bool = False) -> None:
        self.cc.setText("learning…" if learning else (f"CC {cc}" if cc is not None else ""))
        self.cc.setStyleSheet(f"font-size: 7pt; color: {theme.ACCENT if learning else theme.DIM};")

    def _show(self) -> None:
        v = self.slider.value()
        self.value.setText("off" if self.mute.isChecked() or v == 0 else f"{v}%")
        self.slider.setEnabled(not self.mute.isChecked())

    def _moved(self, v: int) -> None:
        self._show()
        self.changed.emit(self.family, self.strength)

    def _muted(self, on: bool) -> None:
        self._show()
        self.changed.emit(self.family, self.strength)

    def _menu(self, pos) -> None:
        m = QMenu(self)
        act = m.addAction(f"MIDI learn: move a knob for {theme.FAMILY_LABELS[self.family]}")
        reset = m.addAction("Reset to neutral (50 %)")
        chosen = m.exec(self.mapToGlobal(pos))
        if chosen is act:
            self.learn.emit(self.family)
        elif chosen is reset:
            self.mute.setChecked(False)
            self.set_strength(0.5, emit=True)


class Mixer(QWidget):
    changed = pyqtSignal(str, float)
    learn = pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.strips: dict[str, FamilyStrip] = {}
        for f in FAMILIES:
            s = FamilyStrip(f.name)
            s.changed.connect(self.changed)
            s.learn.connect(self.learn)
            self.strips[f.name] = s
            lay.addWidget(s)

    def strengths(self) -> dict[str, float]:
        """Fader values (mutes aside), only those moved off neutral."""
        return {f: s.slider.value() / 100 for f, s in self.strips.items() if s.slider.value() != 50}

    def mutes(self) -> list[str]:
        return [f for f, s in self.strips.items() if s.mute.isChecked()]
