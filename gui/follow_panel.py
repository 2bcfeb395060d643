""""Follow the player": one fader per follow control (`FOLLOW_CONTROLS`), 0 off .. 100 % strict.

Each move goes straight to `session.set_controls(follow_...=x)`, which the engine applies
between two sampling steps. Right-click -> MIDI learn binds the next CC that arrives to
the fader (`session.ccmap.learn`), as on the instrument faders; a CC moves the fader.
"""

from __future__ import annotations

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QMenu, QSlider, QVBoxLayout, QWidget

from musebridge.engine.decode.sampling import FOLLOW_CONTROLS, SamplingControls

from . import theme

LABELS = {"follow_key": "Key", "follow_groove": "Groove", "follow_texture": "Texture"}
TIPS = {
    "follow_key": "Key: prefer the key heard in your notes (100 %: strictly in key)",
    "follow_groove": "Groove: prefer the onset grid and the swing you play",
    "follow_texture": "Texture: note lengths and number of voices near yours (no droning held notes)",
}


class FollowFader(QWidget):
    """One follow control: its name, a horizontal fader, its value, its CC (one row)."""

    changed = pyqtSignal(str, float)  # control name, 0..1
    learn = pyqtSignal(str)  # control name

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.control = name
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.label = QLabel(LABELS[name])
        self.label.setFixedWidth(52)
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setPageStep(10)
        self.slider.valueChanged.connect(self._moved)
        self.value = QLabel()
        self.value.setObjectName("value")
        self.value.setMinimumWidth(38)
        self.value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.cc = QLabel("")
        self.cc.setFixedWidth(52)
        self.cc.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.set_cc(None)
        lay.addWidget(self.label)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.value)
        lay.addWidget(self.cc)
        tip = f"{TIPS[name]}.\n0 off, 100 % strict. Right-click: MIDI learn"
        for w in (self, self.label, self.slider, self.value, self.cc):
            w.setToolTip(tip)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.set_value(getattr(SamplingControls(), name))

    def get(self) -> float:
        return self.slider.value() / 100.0

    def set_value(self, value: float, emit: bool = False) -> None:
        """Show a value that came from elsewhere (a CC, saved settings)."""
        self.slider.blockSignals(True)
        self.slider.setValue(round(float(value) * 100))
        self.slider.blockSignals(False)
        self._show()
        if emit:
            self.changed.emit(self.control, self.get())

    def set_cc(self, cc: int | None, learning: bool = False) -> None:
        self.cc.setText("learning…" if learning else (f"CC {cc}" if cc is not None else ""))
        self.cc.setStyleSheet(f"font-size: 7pt; color: {theme.ACCENT if learning else theme.DIM};")

    def _show(self) -> None:
        v = self.slider.value()
        self.value.setText("off" if v == 0 else f"{v}%")

    def _moved(self, _v: int) -> None:
        self._show()
        self.changed.emit(self.control, self.get())

    def _menu(self, pos) -> None:
        default = getattr(SamplingControls(), self.control)
        m = QMenu(self)
        act = m.addAction(f"MIDI learn: move a knob for Follow {LABELS[self.control].lower()}")
        reset = m.addAction(f"Reset to the default ({'off' if default == 0 else f'{round(default * 100)} %'})")
        chosen = m.exec(self.mapToGlobal(pos))
        if chosen is act:
            self.learn.emit(self.control)
        elif chosen is reset:
            self.set_value(default, emit=True)


class FollowPanel(QGroupBox):
    """The three follow faders in one group (right-click any row: MIDI learn)."""

    changed = pyqtSignal(str, float)  # control name, 0..1
    learn = pyqtSignal(str)  # control name

    def __init__(self, parent=None):
        super().__init__("Follow the player", parent)
        self.setToolTip("How closely the model follows what you play: 0 off, 100 % strict. Right-click: MIDI learn")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 8, 6, 4)
        lay.setSpacing(6)
        self.faders: dict[str, FollowFader] = {}
        for name in FOLLOW_CONTROLS:
            f = FollowFader(name)
            f.changed.connect(self.changed)
            f.learn.connect(self.learn)
            lay.addWidget(f)
            self.faders[name] = f

    def values(self) -> dict[str, float]:
        return {name: f.get() for name, f in self.faders.items()}

    def set_values(self, controls: SamplingControls) -> None:
        for name, f in self.faders.items():
            f.set_value(getattr(controls, name))

    def show_ccs(self, ccmap) -> None:
        for name, f in self.faders.items():
            f.set_cc(ccmap.cc_for(name), learning=ccmap.learning == name)
