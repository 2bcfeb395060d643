"""The dark theme: a palette, one stylesheet, and one colour per instrument family.

Colours are chosen to sit beside a DAW (neutral greys, one warm accent) and to keep the
13 families apart on a dark piano roll. Sizes in the stylesheet are in points or em, so
the window scales with the screen's DPI.
"""

from __future__ import annotations

from PyQt6.QtGui import QColor, QPalette

from musebridge.engine.music.families import FAMILIES

BG = "#1b1c1f"  # window
PANEL = "#232529"  # group boxes, lists
RAISED = "#2d3035"  # buttons, inputs
LINE = "#3a3d43"  # borders
TEXT = "#d8dade"
DIM = "#8b9098"
ACCENT = "#ff9f43"  # warm orange: running, selection, focus
GOOD = "#4cd68a"
WARN = "#ffc94d"
BAD = "#ff5c5c"

FAMILY_COLOURS: dict[str, str] = {
    "piano": "#5ab8ff",
    "chromatic_percussion": "#6fe3e0",
    "organ": "#b48cff",
    "guitar": "#ffb347",
    "bass": "#ff6b6b",
    "strings": "#ff7fc8",
    "ensemble": "#e0a3ff",
    "brass": "#ffe066",
    "reed": "#b5e655",
    "pipe": "#5fe08a",
    "synth_lead": "#3fd0b0",
    "synth_pad": "#8a9bff",
    "drums": "#c9ccd2",
}
assert set(FAMILY_COLOURS) == {f.name for f in FAMILIES}

FAMILY_LABELS: dict[str, str] = {
    "piano": "Piano", "chromatic_percussion": "Mallets", "organ": "Organ", "guitar": "Guitar", "bass": "Bass",
    "strings": "Strings", "ensemble": "Ensemble", "brass": "Brass", "reed": "Reed", "pipe": "Pipe",
    "synth_lead": "Lead", "synth_pad": "Pad", "drums": "Drums",
}


def family_colour(name: str) -> QColor:
    return QColor(FAMILY_COLOURS.get(name, TEXT))


def palette() -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: BG, QPalette.ColorRole.WindowText: TEXT, QPalette.ColorRole.Base: PANEL,
        QPalette.ColorRole.AlternateBase: RAISED, QPalette.ColorRole.ToolTipBase: RAISED,
        QPalette.ColorRole.ToolTipText: TEXT, QPalette.ColorRole.Text: TEXT, QPalette.ColorRole.Button: RAISED,
        QPalette.ColorRole.ButtonText: TEXT, QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: ACCENT, QPalette.ColorRole.HighlightedText: "#111111",
        QPalette.ColorRole.Link: ACCENT, QPalette.ColorRole.PlaceholderText: DIM,
    }
    for role, colour in roles.items():
        p.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#5c6068"))
    return p


STYLESHEET = f"""
QWidget {{ font-size: 9.5pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QToolTip {{ background: {RAISED}; color: {TEXT}; border: 1px solid {LINE}; padding: 4px; }}
QGroupBox {{ background: {PANEL}; border: 1px solid {LINE}; border-radius: 6px; margin-top: 1.3em; padding: 0.5em 0.5em 0.4em 0.5em; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 0.7em; padding: 0 0.3em; color: {DIM};
    font-weight: 600; text-transform: uppercase; letter-spacing: 1px; font-size: 8pt; }}
QLabel#dim {{ color: {DIM}; }}
QLabel#value {{ color: {TEXT}; font-family: monospace; }}
QLabel#big {{ font-size: 17pt; font-weight: 600; }}
QLabel#bigunit {{ color: {DIM}; font-size: 9pt; }}
QLabel#clock {{ font-family: monospace; font-size: 12pt; font-weight: 600; color: {TEXT};
    background: #141518; border: 1px solid {LINE}; border-radius: 4px; padding: 3px 10px; }}
QPushButton, QToolButton {{ background: {RAISED}; border: 1px solid {LINE}; border-radius: 4px; padding: 4px 10px; color: {TEXT}; }}
QPushButton:hover, QToolButton:hover {{ border-color: #555a62; background: #33363c; }}
QPushButton:pressed, QToolButton:pressed {{ background: #26282c; }}
QPushButton:checked, QToolButton:checked {{ background: {ACCENT}; color: #151515; border-color: {ACCENT}; font-weight: 600; }}
QPushButton:disabled, QToolButton:disabled {{ color: #5c6068; border-color: #303238; }}
QPushButton#start {{ font-weight: 700; min-width: 6em; }}
QPushButton#start:checked {{ background: {GOOD}; border-color: {GOOD}; color: #10130f; }}
QPushButton#panic {{ color: {BAD}; border-color: #6b3333; font-weight: 700; }}
QPushButton#panic:hover {{ background: #4a2626; }}
QToolButton#mute {{ padding: 1px 0; font-weight: 700; font-size: 8pt; }}
QToolButton#mute:checked {{ background: {BAD}; border-color: {BAD}; color: #1a0d0d; }}
QToolButton#segment {{ border-radius: 0; padding: 4px 12px; }}
QToolButton#segfirst {{ border-top-right-radius: 0; border-bottom-right-radius: 0; padding: 4px 12px; }}
QToolButton#seglast {{ border-top-left-radius: 0; border-bottom-left-radius: 0; padding: 4px 12px; }}
QComboBox, QSpinBox, QDoubleSpinBox {{ background: {RAISED}; border: 1px solid {LINE}; border-radius: 4px; padding: 3px 6px; color: {TEXT}; }}
QComboBox:hover, QSpinBox:hover, QDoubleSpinBox:hover {{ border-color: #555a62; }}
QComboBox QAbstractItemView {{ background: {RAISED}; border: 1px solid {LINE}; selection-background-color: {ACCENT}; selection-color: #111; }}
QSlider::groove:horizontal {{ height: 4px; background: #17181b; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: #e8e9eb; width: 12px; margin: -5px 0; border-radius: 6px; }}
QSlider::groove:vertical {{ width: 4px; background: #17181b; border-radius: 2px; }}
QSlider::add-page:vertical {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:vertical {{ background: #e8e9eb; height: 10px; margin: 0 -7px; border-radius: 3px; }}
QSlider:disabled::add-page:vertical {{ background: #44474d; }}
QListWidget {{ background: {PANEL}; border: 1px solid {LINE}; border-radius: 4px; outline: none; }}
QListWidget::item {{ padding: 4px; border-bottom: 1px solid #2b2e33; }}
QListWidget::item:selected {{ background: #3a3226; color: {TEXT}; border-left: 3px solid {ACCENT}; }}
QProgressBar {{ background: #17181b; border: 1px solid {LINE}; border-radius: 4px; text-align: center; color: {TEXT}; height: 1.2em; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QStatusBar {{ background: #141518; color: {DIM}; border-top: 1px solid {LINE}; }}
QStatusBar QLabel {{ padding: 0 8px; }}
QScrollBar:horizontal {{ background: {BG}; height: 10px; }}
QScrollBar::handle:horizontal {{ background: #44474d; border-radius: 4px; min-width: 30px; }}
QScrollBar:vertical {{ background: {BG}; width: 10px; }}
QScrollBar::handle:vertical {{ background: #44474d; border-radius: 4px; min-height: 30px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QSplitter::handle {{ background: {BG}; }}
QMenu {{ background: {RAISED}; border: 1px solid {LINE}; }}
QMenu::item:selected {{ background: {ACCENT}; color: #111; }}
"""


def apply(app) -> None:
    """Fusion style, the dark palette and the stylesheet on a QApplication."""
    app.setStyle("Fusion")
    app.setPalette(palette())
    app.setStyleSheet(STYLESHEET)
