"""The latency meter: how fast the model answers, with what it is compared to.

Phrase end -> first note is what the player feels (it includes the wait for the next
bar line, since answers land on the bar); first token is the model's own latency;
tokens/s and the realtime factor (seconds of music generated per second of compute)
say whether the backend keeps up: below 1x an answer thins out, it never rushes.
"""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QPointF, QRectF, Qt
from PyQt6.QtGui import QColor, QPainter, QPainterPath, QPen
from PyQt6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from . import theme


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


class Sparkline(QWidget):
    """The last values of one series as a line, with a faint reference line."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.values: list[float] = []
        self.reference: float | None = None
        self.setMinimumHeight(26)

    def set_values(self, values: list[float], reference: float | None = None) -> None:
        self.values = list(values)[-60:]
        self.reference = reference
        self.update()

    def paintEvent(self, e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect()).adjusted(1, 2, -1, -2)
        p.fillRect(self.rect(), QColor("#17181b"))
        if len(self.values) >= 2:
            top = max(max(self.values), self.reference or 0) * 1.15 or 1.0
            step = r.width() / (len(self.values) - 1)
            path = QPainterPath()
            for i, v in enumerate(self.values):
                pt = QPointF(r.left() + i * step, r.bottom() - v / top * r.height())
                path.lineTo(pt) if i else path.moveTo(pt)
            if self.reference:
                y = r.bottom() - self.reference / top * r.height()
                p.setPen(QPen(QColor("#4a4d54"), 1, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
            p.setPen(QPen(QColor(theme.ACCENT), 1.4))
            p.drawPath(path)
        p.end()


class LatencyMeter(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(4)
        head = QHBoxLayout()
        self.big = QLabel("—")
        self.big.setObjectName("big")
        unit = QLabel("ms  phrase end → first note")
        unit.setObjectName("bigunit")
        head.addWidget(self.big)
        head.addWidget(unit, 1, Qt.AlignmentFlag.AlignBottom)
        outer.addLayout(head)
        self.sub = QLabel("no answer yet")
        self.sub.setObjectName("dim")
        outer.addWidget(self.sub)
        why = QLabel("answers wait for the next bar line")
        why.setObjectName("dim")
        why.setStyleSheet("font-size: 8pt;")
        outer.addWidget(why)
        self.spark = Sparkline()
        self.spark.setToolTip("first-token latency of recent answers (dashed: 50 ms)")
        outer.addWidget(self.spark)
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(2)
        self.rows: dict[str, QLabel] = {}
        for i, (key, name, tip) in enumerate([
            ("first", "first token", "phrase end → the model's first sampled token (compute latency), last / p99"),
            ("speed", "speed", "tokens sampled per second while answering"),
            ("rt", "realtime", "seconds of music generated per second of compute; below 1× answers thin out"),
            ("jitter", "out jitter", "how far sent notes land from their beat, p99"),
            ("backend", "backend", "the inference runtime in use"),
        ]):
            lab = QLabel(name)
            lab.setObjectName("dim")
            val = QLabel("—")
            val.setObjectName("value")
            val.setToolTip(tip)
            lab.setToolTip(tip)
            grid.addWidget(lab, i, 0)
            grid.addWidget(val, i, 1)
            self.rows[key] = val
        grid.setColumnStretch(1, 1)
        outer.addLayout(grid)

    def show_numbers(self, m: dict) -> None:
        """m: lists phrase_to_note_ms, first_token_ms, tokens_per_s, realtime_x; backend; jitter_p99_ms."""
        p2n = list(m.get("phrase_to_note_ms") or [])
        ft = list(m.get("first_token_ms") or [])
        tps = list(m.get("tokens_per_s") or [])
        rtx = list(m.get("realtime_x") or [])
        self.big.setText(_fmt_ms(p2n[-1]) if p2n else "—")
        if not p2n:
            self.sub.setText("no live answer yet")
        if p2n:
            self.sub.setText(f"p50 {_fmt_ms(float(np.percentile(p2n, 50)))} · p99 {_fmt_ms(float(np.percentile(p2n, 99)))} ms"
                             f" · {len(p2n)} answer{'s' if len(p2n) != 1 else ''}")
        self.rows["first"].setText(f"{_fmt_ms(ft[-1])} ms  (p99 {_fmt_ms(float(np.percentile(ft, 99)))})" if ft else "—")
        self.rows["speed"].setText(f"{tps[-1]:,.0f} tok/s" if tps else "—")
        if rtx:
            x = rtx[-1]
            colour = theme.GOOD if x >= 2 else theme.WARN if x >= 1 else theme.BAD
            self.rows["rt"].setText(f"<span style='color:{colour}'>{x:.1f}×</span>"
                                    f"{'' if x >= 1 else '  model slower than the music'}")
        else:
            self.rows["rt"].setText("—")
        j = m.get("jitter_p99_ms")
        self.rows["jitter"].setText(f"{j:.2f} ms" if j is not None else "—")
        self.rows["backend"].setText(m.get("backend") or "—")
        self.spark.set_values(ft, reference=50.0)
