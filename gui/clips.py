"""The app's clip list: every answer and variation (`bridge/clips.py`), newest on top;
drag a clip out as a file (a DAW or a file manager takes the URL of a temporary .mid).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from PyQt6.QtCore import QMimeData, QRectF, QSize, Qt, QUrl
from PyQt6.QtGui import QColor, QDrag, QIcon, QPainter, QPixmap
from PyQt6.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

from musebridge.bridge.clips import Clip, clip_from_answer, timing  # noqa: F401  (the app's clips)
from musebridge.bridge.clock import line_at_or_before
from musebridge.bridge.jam_record import RollNote
from musebridge.engine.music.events import Note, Piece

from . import theme


def phrase_before(notes: list[RollNote], beat: float, beats_per_bar: int, bpm: float, max_bars: float = 4,
                  after: float = -math.inf) -> Piece:
    """The player's notes (the roll's, song beats) in the few bars before `beat` and after
    `after`, as a prompt Piece starting on a bar line at 0."""
    lo = max(after, beat - max_bars * beats_per_bar)
    mine = [n for n in notes if n.src == "user" and lo <= n.on < beat]
    tempos, sigs = timing(bpm, beats_per_bar)
    if not mine:
        return Piece(tempos=tempos, time_signatures=sigs)
    shift = line_at_or_before(min(n.on for n in mine), beats_per_bar)
    out = [Note(n.on - shift, max((n.off if n.off is not None else beat) - n.on, 1 / 48), n.pitch,
                max(int(n.velocity or 80), 1), n.family) for n in mine]
    return Piece(notes=out, tempos=tempos, time_signatures=sigs).sorted()


def thumbnail(piece: Piece, size: QSize, beats: float | None = None) -> QPixmap:
    """A small filled roll of a clip, for the list."""
    dpr = 2.0
    pm = QPixmap(int(size.width() * dpr), int(size.height() * dpr))
    pm.setDevicePixelRatio(dpr)
    pm.fill(QColor("#17181b"))
    notes = piece.notes
    if notes:
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        lo = min(n.pitch for n in notes) - 1
        hi = max(n.pitch for n in notes) + 1
        span = max(beats or piece.end, 1e-3)
        w, h = size.width(), size.height()
        rh = max(h / (hi - lo + 1), 1.0)
        for n in notes:
            c = theme.family_colour(n.family)
            x = n.start / span * w
            r = QRectF(x, (hi - n.pitch) * h / (hi - lo + 1), max(n.duration / span * w, 1.5), rh)
            p.fillRect(r, c)
        p.end()
    return pm


class ClipList(QListWidget):
    """The clip history, newest on top; drag a clip out to get its .mid."""

    THUMB = QSize(84, 30)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.clips: list[Clip] = []
        self.setIconSize(self.THUMB)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setDefaultDropAction(Qt.DropAction.CopyAction)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setWordWrap(True)
        self.setUniformItemSizes(False)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self._drag_dir: Path | None = None

    def add_clip(self, clip: Clip) -> QListWidgetItem:
        self.clips.append(clip)
        item = QListWidgetItem(QIcon(thumbnail(clip.piece, self.THUMB, clip.bars * clip.beats_per_bar)),
                               self._text(clip))
        item.setData(Qt.ItemDataRole.UserRole, len(self.clips) - 1)
        item.setToolTip("Drag into your DAW or a folder to get the .mid\n" + clip.summary(theme.FAMILY_LABELS))
        self.insertItem(0, item)
        return item

    def update_clip(self, clip: Clip) -> None:
        item = self._item(clip)
        if item is not None:
            item.setText(self._text(clip))

    def _text(self, clip: Clip) -> str:
        what = {"answer": "answer", "variation": "variation", "regenerated": "regenerated"}[clip.source]
        bars = f"{clip.bars:g} bar{'s' if clip.bars != 1 else ''}"
        best = "  ★ critic's pick" if clip.best else ""
        return f"{clip.label}  {what}, {bars}{'  · ' + clip.style if clip.style else ''}{best}\n{clip.summary(theme.FAMILY_LABELS)}"

    def select(self, clip: Clip) -> None:
        """Make `clip` the one selection (and scroll to it)."""
        from PyQt6.QtCore import QItemSelectionModel

        item = self._item(clip)
        if item is not None:
            self.setCurrentItem(item, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def _item(self, clip: Clip) -> QListWidgetItem | None:
        i = self.clips.index(clip)
        for row in range(self.count()):
            if self.item(row).data(Qt.ItemDataRole.UserRole) == i:
                return self.item(row)
        return None

    def rank(self, ranked: list[Clip]) -> None:
        """Put `ranked` (best first) on top of the list in that order, best marked."""
        items = [self.takeItem(self.row(self._item(c))) for c in ranked]
        for item in reversed(items):
            self.insertItem(0, item)
        for c in ranked:
            self.update_clip(c)

    def selected_clips(self) -> list[Clip]:
        rows = sorted((self.row(it), it) for it in self.selectedItems())
        return [self.clips[it.data(Qt.ItemDataRole.UserRole)] for _, it in rows]

    def current_clip(self) -> Clip | None:
        sel = self.selected_clips()
        return sel[0] if sel else None

    # --- drag out -------------------------------------------------------------------------
    def drag_dir(self) -> Path:
        if self._drag_dir is None:
            self._drag_dir = Path(tempfile.mkdtemp(prefix="musebridge-clips-"))
        return self._drag_dir

    def mimeTypes(self) -> list[str]:
        return ["text/uri-list"]

    def mimeData(self, items) -> QMimeData:
        data = QMimeData()
        urls = []
        for it in items:
            clip = self.clips[it.data(Qt.ItemDataRole.UserRole)]
            urls.append(QUrl.fromLocalFile(str(clip.export(self.drag_dir() / clip.file_name()))))
        data.setUrls(urls)
        return data

    def startDrag(self, actions) -> None:
        items = self.selectedItems()
        if not items:
            return
        drag = QDrag(self)
        drag.setMimeData(self.mimeData(items))
        drag.setPixmap(items[0].icon().pixmap(self.THUMB))
        drag.exec(Qt.DropAction.CopyAction)  # copy only: a drop never removes the clip here
