"""Generation off the GUI thread: variations of a phrase, and regenerating a clip.

A job owns its own runtime (the session's runtime belongs to the jam's worker and its
KV cache), opened once and reused. Each variation is one `generate()` call with its own
seed, so the progress bar moves per variation and each clip appears as soon as it
exists; when the model folder ships a critic, the finished set is ranked by it.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

from PyQt6.QtCore import QObject, pyqtSignal

from musebridge.engine.training.checkpoint import DEFAULT_MODEL
from musebridge.engine.music.events import Piece
from musebridge.engine.decode.sampling import SamplingControls

from .clips import Clip
from .host import plain


def open_runtime(model: str | None, backend: str = "auto"):
    """A fresh batch-1 runtime for offline generation (the backends' own chooser), on one
    thread: variations run beside a live jam, whose runtime must keep the other cores."""
    from musebridge.engine.decode.backends import open_runtime as _open

    return _open(model, backend, threads=1)


def critic_folder(model: str | None) -> Path | None:
    folder = (Path(model) if model else DEFAULT_MODEL) / "critic"
    return folder if (folder / "classifier.json").exists() else None


class GenerateJob(QObject):
    """Runs N generations from one prompt in a thread; signals arrive on the GUI thread."""

    progress = pyqtSignal(int, int, str)  # done, total, what now
    clip = pyqtSignal(object)  # one finished Clip
    done = pyqtSignal(list, str)  # all clips (ranked when a critic exists), error ("" if none)

    def __init__(self, model: str | None, backend: str = "auto", runtime_factory=open_runtime, parent=None):
        super().__init__(parent)
        self.model, self.backend = model, backend
        self._factory = runtime_factory
        self._runtime = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self._busy = False  # cleared before `done`, so a slot answering `done` may start the next job

    @property
    def running(self) -> bool:
        return self._busy

    def cancel(self) -> None:
        self._cancel.set()

    def start(self, prompt: Piece, n: int, bars: float, controls: SamplingControls, style: str | None,
              beats_per_bar: int, bpm: float, source: str = "variation", label: str = "V") -> bool:
        if self.running:
            return False
        self._cancel.clear()
        self._busy = True
        self.thread = threading.Thread(target=self._run, args=(prompt, n, bars, controls, style, beats_per_bar, bpm,
                                                               source, label), name="musebridge-variations", daemon=True)
        self.thread.start()
        return True

    def _emit(self, signal: str, *args) -> None:
        try:
            getattr(self, signal).emit(*args)
        except RuntimeError:  # the window closed while generating: nobody to tell
            self._cancel.set()

    def _run(self, prompt, n, bars, controls, style, beats_per_bar, bpm, source, label) -> None:
        from musebridge.engine.decode.generate import generate

        out: list[Clip] = []
        try:
            with self._lock:
                if self._runtime is None:
                    self._emit("progress", 0, n, "loading the model")
                    self._runtime = self._factory(self.model, self.backend)
                base = controls.seed if controls.seed is not None else random.randrange(1, 1_000_000)
                for i in range(n):
                    if self._cancel.is_set():
                        break
                    self._emit("progress", i, n, f"generating {i + 1} of {n}")
                    c = replace(controls, seed=base + i)
                    res = generate(self._runtime, prompt, bars, c, style, variations=1)[0]
                    piece = res.piece
                    piece.name = f"MuseBridge {source} {label}{i + 1 if n > 1 else ''}"
                    clip = Clip(label=f"{label}{i + 1}" if n > 1 else label, piece=piece, bars=bars, bpm=bpm,
                                beats_per_bar=beats_per_bar, controls=c.to_dict(), style=style, source=source,
                                prompt=prompt, model=self.model)
                    clip._tokens = res.tokens  # for the critic
                    out.append(clip)
                    self._emit("clip", clip)
                critic = critic_folder(self.model)
                if critic is not None and len(out) > 1:
                    self._emit("progress", len(out), n, "ranking with the critic")
                    from musebridge.engine.decode.critic_score import rank_continuations  # ONNX Runtime: no torch

                    scores = rank_continuations(critic, prompt, [c._tokens for c in out], self._runtime.vocab, style,
                                                threads=1)  # beside a live jam, as the runtime
                    for c, s in zip(out, scores):
                        c.critic = float(s)
                    out.sort(key=lambda c: -c.critic)
            self._emit("progress", n, n, "done")
            self._busy = False
            self._emit("done", out, "")
        except Exception as e:
            self._busy = False
            self._emit("done", out, plain(e))


