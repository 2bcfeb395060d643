"""The live piano roll: the player's notes and the model's, one colour per family.

A plain `paintEvent` over the jam record's `roll_snapshot()` (`RollNote`s in song beats), so
the roll draws exactly what the session heard and sent. The player's notes are outlined
and pale, the model's filled; answers are marked as bands on the ruler. The view follows
the playhead until the player scrolls back (wheel or scrollbar); scrolling to the end,
or the Follow button, follows again. Ctrl+wheel zooms.
"""

from __future__ import annotations

import math

from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen, QPixmap
from PyQt6.QtWidgets import QScrollBar, QWidget

from musebridge.bridge.jam_record import RollNote

from . import theme

KEY_W = 38  # piano keys on the left
RULER_H = 30  # bar numbers on top, answers in a band under them
BAND = 11  # the answers' band at the bottom of the ruler
SCROLL_STEPS_PER_BEAT = 8
BLACK = {1, 3, 6, 8, 10}
NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class PianoRoll(QWidget):
    follow_changed = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumSize(320, 180)
        self.notes: list[RollNote] = []
        self.regions: list[tuple[float, float, str]] = []  # (start, end, label) in song beats
        self.playhead: float | None = None
        self.beats_per_bar = 4
        self.max_open = 8.0  # beats a model note can sound at most (the session's max_note_beats)
        self.px_per_beat = 26.0
        self.follow = True
        self.view_start = 0.0
        self.low, self.high = 48, 84
        self.hint = "Play your MIDI keyboard: your notes appear outlined, the model's answers filled."
        self.scroll = QScrollBar(Qt.Orientation.Horizontal, self)
        self.scroll.valueChanged.connect(self._scrolled)
        self._setting_scroll = False

    # --- data in ------------------------------------------------------------------------
    def set_data(self, notes: list[RollNote], playhead: float | None, regions: list[tuple[float, float, str]] | None = None,
                 beats_per_bar: int | None = None, max_open: float | None = None) -> None:
        self.notes = notes
        if max_open:
            self.max_open = max_open
        self.playhead = playhead
        if regions is not None:
            self.regions = regions
        if beats_per_bar:
            self.beats_per_bar = beats_per_bar
        self._fit_pitches()
        self._update_scroll()
        self.update()

    def set_follow(self, on: bool) -> None:
        if on != self.follow:
            self.follow = on
            self.follow_changed.emit(on)
        self._update_scroll()
        self.update()

    # --- geometry -----------------------------------------------------------------------
    @property
    def _area(self) -> QRectF:
        """Where notes go (cached per size: paint asks for it thousands of times)."""
        size = (self.width(), self.height())
        if getattr(self, "_area_for", None) != size:
            h = self.height() - self.scroll.sizeHint().height()
            self._area_rect = QRectF(KEY_W, RULER_H, max(self.width() - KEY_W, 1), max(h - RULER_H, 1))
            self._area_for = size
        return self._area_rect

    @property
    def visible_beats(self) -> float:
        return self._area.width() / self.px_per_beat

    def _extent(self) -> tuple[float, float]:
        """The beats there is something to see in: first note .. playhead (or last note)."""
        ends = [n.off if n.off is not None else (self.playhead or n.on) for n in self.notes]
        first = min((n.on for n in self.notes), default=self.playhead or 0.0)
        last = max([*ends, *(e for _, e, _ in self.regions), self.playhead or 0.0], default=0.0)
        return min(first, last), last

    def _fit_pitches(self) -> None:
        if not self.notes:
            return
        lo = min(n.pitch for n in self.notes) - 3
        hi = max(n.pitch for n in self.notes) + 3
        if hi - lo < 24:
            mid = (hi + lo) / 2
            lo, hi = int(mid - 12), int(mid + 12)
        self.low, self.high = max(lo, 0), min(hi, 127)

    def _update_scroll(self) -> None:
        first, last = self._extent()
        vis = self.visible_beats
        if self.follow:
            self.view_start = (self.playhead if self.playhead is not None else last) - 0.8 * vis
        lo = min(first - 1.0, self.view_start)
        hi = max(last - 0.8 * vis, lo, self.view_start if not self.follow else lo)
        self._setting_scroll = True
        self.scroll.setRange(int(lo * SCROLL_STEPS_PER_BEAT), int(math.ceil(hi * SCROLL_STEPS_PER_BEAT)))
        self.scroll.setPageStep(max(int(vis * SCROLL_STEPS_PER_BEAT), 1))
        self.scroll.setValue(int(round(self.view_start * SCROLL_STEPS_PER_BEAT)))
        self._setting_scroll = False

    def _scrolled(self, value: int) -> None:
        if self._setting_scroll:
            return
        self.view_start = value / SCROLL_STEPS_PER_BEAT
        at_end = value >= self.scroll.maximum()
        self.set_follow(at_end and self.playhead is not None)
        self.update()

    def resizeEvent(self, e) -> None:
        h = self.scroll.sizeHint().height()
        self.scroll.setGeometry(KEY_W, self.height() - h, self.width() - KEY_W, h)
        self._update_scroll()
        super().resizeEvent(e)

    def zoom(self, factor: float) -> None:
        self.px_per_beat = min(max(self.px_per_beat * factor, 4.0), 200.0)
        self._update_scroll()
        self.update()

    def fit_all(self) -> None:
        """Zoom so everything played so far is in view, and follow the playhead."""
        first, last = self._extent()
        span = max(last - first, 4.0)
        self.px_per_beat = min(max(self._area.width() / (span / 0.8 + 1.0), 4.0), 200.0)
        self.set_follow(True)
        self._update_scroll()
        self.update()

    def wheelEvent(self, e) -> None:
        d = e.angleDelta()
        if e.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom(1.15 if d.y() > 0 else 1 / 1.15)
            return
        steps = (d.x() or d.y()) / 120.0
        self.view_start -= steps * self.visible_beats / 8
        self.set_follow(False)
        self._update_scroll()
        self.update()

    def x_of(self, beat: float) -> float:
        return KEY_W + (beat - self.view_start) * self.px_per_beat

    def y_of(self, pitch: float) -> float:
        return RULER_H + (self.high - pitch) * self._area.height() / (self.high - self.low + 1)

    # --- painting -----------------------------------------------------------------------
    def paintEvent(self, e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        a = self._area
        row_h = a.height() / (self.high - self.low + 1)
        p.drawPixmap(0, 0, self._background(a, row_h))
        # regions (answers)
        for start, end, label in self.regions:
            x0, x1 = self.x_of(start), self.x_of(end)
            if x1 < a.left() or x0 > a.right():
                continue
            p.fillRect(QRectF(x0, a.top(), x1 - x0, a.height()), QColor(255, 159, 67, 14))
        # grid
        bpb = self.beats_per_bar
        first_beat = math.floor(self.view_start)
        small = QFont(self.font())
        small.setPointSizeF(max(self.font().pointSizeF() * 0.8, 6.5))
        p.setFont(small)
        for b in range(first_beat, int(self.view_start + self.visible_beats) + 2):
            x = self.x_of(b)
            if x < a.left():
                continue
            bar = b % bpb == 0
            p.setPen(QPen(QColor("#34373d" if bar else "#212327"), 1))
            p.drawLine(QPointF(x, a.top()), QPointF(x, a.bottom()))
        # notes
        lo_b, hi_b = self.view_start - 1, self.view_start + self.visible_beats + 1
        p.setClipRect(a)
        for n in self.notes:
            off = n.off
            if off is None:  # still sounding (the bridge's guard never holds a model note past max_open)
                off = self.playhead if self.playhead is not None else n.on + 0.25
                if n.src == "model":
                    off = min(off, n.on + self.max_open)
            if off < lo_b or n.on > hi_b or not self.low <= n.pitch <= self.high:
                continue
            x0, x1 = self.x_of(n.on), self.x_of(max(off, n.on + 0.05))
            r = QRectF(x0, self.y_of(n.pitch) + 0.5, max(x1 - x0, 2.0), max(row_h - 1.0, 1.5))
            c = theme.family_colour(n.family)
            if n.src == "user":
                fill = QColor(c)
                fill.setAlpha(55)
                p.setPen(QPen(c.lighter(110), 1.4))
                p.setBrush(fill)
            else:
                fill = QColor(c)
                fill.setAlpha(150 + int(min(max(n.velocity or 80, 1), 127) * 105 / 127))
                p.setPen(QPen(c.darker(170), 0.8))
                p.setBrush(fill)
            p.drawRoundedRect(r, 2.0, 2.0)
        p.setClipping(False)
        # ruler
        p.fillRect(QRectF(a.left(), 0, a.width(), RULER_H), QColor("#1e2024"))
        band = QRectF(a.left(), RULER_H - BAND - 1, a.width(), BAND)
        for start, end, label in self.regions:
            x0, x1 = max(self.x_of(start), a.left()), min(self.x_of(end), a.right())
            if x1 <= x0:
                continue
            r = QRectF(x0 + 1, band.top(), x1 - x0 - 2, band.height())
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(theme.ACCENT).darker(185))
            p.drawRoundedRect(r, 2, 2)
            p.setPen(QColor(theme.ACCENT))
            p.drawText(r.adjusted(4, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, f"answer {label}")
        p.setPen(QColor(theme.DIM))
        for b in range(first_beat - first_beat % bpb, int(self.view_start + self.visible_beats) + 2, bpb):
            x = self.x_of(b)
            if x < a.left() - 1:
                continue
            p.drawLine(QPointF(x, 2), QPointF(x, band.top() - 1))
            if self.px_per_beat * bpb >= 28 or (b // bpb) % 4 == 0:
                p.drawText(QPointF(x + 3, band.top() - 4), str(b // bpb + 1))
        p.fillRect(QRectF(0, 0, KEY_W, RULER_H), QColor("#1e2024"))
        # playhead
        if self.playhead is not None:
            x = self.x_of(self.playhead)
            if a.left() <= x <= a.right():
                p.setPen(QPen(QColor(theme.ACCENT), 1.5))
                p.drawLine(QPointF(x, RULER_H), QPointF(x, a.bottom()))
                tri = QPainterPath()
                tri.moveTo(x - 5, RULER_H - 7)
                tri.lineTo(x + 5, RULER_H - 7)
                tri.lineTo(x, RULER_H)
                tri.closeSubpath()
                p.fillPath(tri, QColor(theme.ACCENT))
        # legend / hint
        self._legend(p, a)
        if not self.notes:
            p.setPen(QColor(theme.DIM))
            p.drawText(a, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.hint)
        p.end()

    def _background(self, a: QRectF, row_h: float) -> QPixmap:
        """Pitch rows and the keyboard: the same every frame until the size or range changes."""
        dpr = self.devicePixelRatioF()
        key = (self.width(), self.height(), self.low, self.high, dpr)
        if getattr(self, "_bg_key", None) == key:
            return self._bg
        pm = QPixmap(max(int(self.width() * dpr), 1), max(int(self.height() * dpr), 1))
        pm.setDevicePixelRatio(dpr)
        pm.fill(QColor("#141518"))
        p = QPainter(pm)
        for pitch in range(self.low, self.high + 1):
            y = self.y_of(pitch)
            if pitch % 12 in BLACK:
                p.fillRect(QRectF(a.left(), y, a.width(), row_h), QColor("#18191c"))
            if pitch % 12 == 0:
                p.setPen(QPen(QColor("#26282d"), 1))
                p.drawLine(QPointF(a.left(), y + row_h), QPointF(a.right(), y + row_h))
        p.fillRect(QRectF(0, 0, KEY_W, self.height()), QColor("#1e2024"))
        small = QFont(self.font())
        small.setPointSizeF(max(self.font().pointSizeF() * 0.75, 6.0))
        p.setFont(small)
        for pitch in range(self.low, self.high + 1):
            y = self.y_of(pitch)
            black = pitch % 12 in BLACK
            k = QRectF(0, y, KEY_W - 2 if not black else KEY_W * 0.6, row_h)
            p.fillRect(k.adjusted(0, 0.5, 0, -0.5), QColor("#0f1012") if black else QColor("#c9ccd2"))
            if pitch % 12 == 0 and row_h * 12 >= 40:
                p.setPen(QColor("#4a4d54"))
                p.drawText(k.adjusted(0, -3, -3, 3), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                           f"C{pitch // 12 - 1}")
        p.end()
        self._bg, self._bg_key = pm, key
        return pm

    def _legend(self, p: QPainter, a: QRectF) -> None:
        fm = p.fontMetrics()
        items = [("you", True), ("model", False)]
        x = a.right() - 10
        y = a.top() + 8
        for label, outlined in reversed(items):
            w = fm.horizontalAdvance(label)
            x -= w
            p.setPen(QColor(theme.DIM))
            p.drawText(QPointF(x, y + fm.ascent() - 2), label)
            x -= 20
            r = QRectF(x, y, 15, 8)
            c = QColor(theme.TEXT)
            if outlined:
                fill = QColor(c)
                fill.setAlpha(55)
                p.setPen(QPen(c, 1.3))
                p.setBrush(fill)
            else:
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(c)
            p.drawRoundedRect(r, 2, 2)
            x -= 14
