"""The Clips panel of the main window: every answer as a clip, to play, regenerate, vary and export.

A part of `MainWindow` (a mixin: `clips`, the buttons and the handlers live on the window
object, where the tests reach them). Clips are built from the answers and the roll of the
session's `record`; variations and regenerations run on the window's `GenerateJob`, off the
GUI thread.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PyQt6.QtWidgets import (QFileDialog, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSpinBox,
                             QVBoxLayout)

from musebridge.engine.decode.sampling import SamplingControls

from .clips import Clip, ClipList, clip_from_answer, phrase_before
from .host import plain


class ClipsPanelMixin:
    """The Clips group box and what its buttons do."""

    def _clips_box(self) -> QGroupBox:
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

    # --- clips ---------------------------------------------------------------------------------
    def sync_history(self) -> None:
        """New answers in the session's record become clips (with the phrase they answer)."""
        s = self.session
        bpb = s.cfg.beats_per_bar
        notes = s.record.roll_snapshot()
        hist = s.record.answers()
        for i, rec in enumerate(hist):
            if rec.tag <= self._seen_tag:
                continue
            prev_end = hist[i - 1].end(bpb) if i > 0 else -math.inf
            prompt = phrase_before(notes, rec.start, bpb, rec.bpm, after=prev_end)
            clip = clip_from_answer(rec, bpb, prompt, model=s.cfg.model)
            self.clips.add_clip(clip)
            self._seen_tag = rec.tag
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
        notes = s.record.roll_snapshot()
        mine = [n for n in notes if n.src == "user"]
        if not mine:
            return None
        last_on = max(n.on for n in mine)
        ends = [a.end(bpb) for a in s.record.answers()]
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
        from musebridge.engine.music.events import Piece

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
