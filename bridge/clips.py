"""Clips: a jam answer (or a variation) as a Piece with the settings that made it.

A clip exports as a type-1 .mid (one track per family with its GM program, the tempo and
time signature) whose text metadata carries its seed and sampling settings, so a clip a
producer keeps can be made again. `musebridge jam --save DIR` and the app's clip list
both build clips here from the jam record's answers (`AnswerRecord`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from musebridge.engine.music.events import Note, NoteOff, NoteOn, Piece, Tempo, TimeSignature, iter_notes
from musebridge.engine.music.midi_file import write_midi

from .jam_record import AnswerRecord


@dataclass
class Clip:
    """One answer or variation, its notes from beat 0, and what made it."""

    label: str
    piece: Piece
    bars: float
    bpm: float
    beats_per_bar: int = 4
    controls: dict = field(default_factory=dict)  # temperature, top_p, seed, strengths, ...
    style: str | None = None
    source: str = "answer"  # answer | variation | regenerated
    start: float | None = None  # song beat a jam answer began on
    prompt: Piece | None = None  # what it answers (regenerate uses it)
    critic: float | None = None  # the critic's P(real), when ranked
    model: str | None = None
    best: bool = False  # the critic ranked it first among its variations
    cancelled: bool = False  # a jam answer stopped early: the clip holds what of it sounded

    @property
    def seed(self) -> int | None:
        return self.controls.get("seed")

    @property
    def notes(self) -> list[Note]:
        return self.piece.notes

    def metadata(self) -> dict:
        """What a written .mid carries: enough to make the clip again."""
        return {**self.controls, "strengths": self.controls.get("strengths") or {}, "style": self.style,
                "bars": self.bars, "bpm": self.bpm, "source": self.source, "model": self.model, "cancelled": self.cancelled,
                "critic_score": None if self.critic is None else round(float(self.critic), 4),
                "song_beat": None if self.start is None else round(float(self.start), 4)}

    def summary(self, labels: dict[str, str] | None = None) -> str:
        """One line: notes, families (named by `labels`), seed, critic."""
        fams = ", ".join((labels or {}).get(f, f) for f in self.piece.families) or "silence"
        bits = [f"{len(self.notes)} notes", fams]
        bits.append(f"seed {self.seed}" if self.seed is not None else "unseeded")
        if self.critic is not None:
            bits.append(f"critic {self.critic:.2f}")
        return " · ".join(bits)

    def file_name(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", f"musebridge-{self.label}-{self.style or 'any'}").strip("-").lower()
        return f"{stem}{'' if self.seed is None else f'-seed{self.seed}'}.mid"

    def export(self, path: str | Path) -> Path:
        piece = self.piece
        name = piece.name.replace("′", "'").encode("latin-1", "replace").decode("latin-1")
        if name != piece.name:  # a MIDI track name holds latin-1 only (a regenerated clip's label has a prime)
            piece = replace(piece, name=name)
        write_midi(piece, path, metadata=self.metadata())
        return Path(path)


def timing(bpm: float, beats_per_bar: int) -> tuple[list[Tempo], list[TimeSignature]]:
    return [Tempo(0.0, float(bpm))], [TimeSignature(0.0, int(beats_per_bar), 4)]


def clip_from_answer(rec: AnswerRecord, beats_per_bar: int, prompt: Piece | None = None,
                     model: str | None = None) -> Clip:
    """A jam answer (its events in timeline beats) as a clip starting at beat 0."""
    events = [e for e in rec.events if isinstance(e, (NoteOn, NoteOff))]
    t0 = min((e.time for e in events), default=0.0)
    notes = [replace(n, start=n.start - t0) for n in iter_notes(events)]
    tempos, sigs = timing(rec.bpm, beats_per_bar)
    piece = Piece(notes=notes, tempos=tempos, time_signatures=sigs, style=rec.style,
                  name=f"MuseBridge answer {rec.tag}").sorted()
    return Clip(label=f"#{rec.tag}", piece=piece, bars=rec.bars, bpm=rec.bpm,
                beats_per_bar=beats_per_bar, controls=dict(rec.controls or {}), style=rec.style,
                source="answer", start=rec.start, prompt=prompt, model=model, cancelled=bool(rec.cancelled),
                critic=rec.score if rec.score_by == "critic" else None)
