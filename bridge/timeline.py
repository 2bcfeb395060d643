"""The jam as the model hears it: one token stream in beats, the user's notes and the
model's answers interleaved in time order.

The player's notes are encoded and appended to the KV cache as they arrive (streaming
prompt), so at a phrase end only the few tokens since the last note remain to process.
Generated tokens go into the same cache as they are sampled, and their decoded events
are fed back into the same encoder (its tokens discarded: the cache already has them)
so encoder, grammar and cache always agree on what sounds and what time it is.

Marks taken while generating let the session take back what was not played yet --
when the player barges into an answer, or when accompaniment regenerates the part it
has not committed -- by rewinding the cache in O(1) and re-adding, in time order, the
model's notes that did sound and the player's new ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

import numpy as np

from musebridge.engine.events import Event, NoteOff, NoteOn
from musebridge.engine.runtime import CachedRuntime
from musebridge.engine.follow import PlayerProfile
from musebridge.engine.row_decoder import RowDecoder
from musebridge.engine.sampling import NEG, Grammar, LogitShaper
from musebridge.engine.tokenizer import StreamEncoder
from musebridge.engine.vocab import NOTE, WAIT, Vocabulary


@dataclass
class _Mark:
    beat: float
    runtime: tuple
    encoder: StreamEncoder
    grammar: Grammar
    logits: np.ndarray
    model_sounding: dict


@dataclass
class Answer:
    """What one `generate` call produced: events with timeline beats."""

    events: list[Event] = field(default_factory=list)
    tokens: int = 0
    first_token_s: float | None = None  # wall time from call to the first sampled token
    cancelled: bool = False


class Timeline:
    """Runtime + encoder + grammar for a whole jam; times are timeline beats (>= 0)."""

    def __init__(self, runtime: CachedRuntime, style: str | None, families: list[str], beats_per_bar: float = 4.0):
        if runtime.vocab.config.time_mode != "beats":
            raise ValueError("the realtime bridge needs a beats-mode vocabulary")
        self.rt = runtime
        self.vocab: Vocabulary = runtime.vocab
        self.tpb = self.vocab.config.ticks_per_beat
        self.encoder = StreamEncoder(self.vocab)
        self.grammar = Grammar(self.vocab)
        prefix = self.encoder.prefix(style, families)
        for t in prefix:
            self.grammar.update(t)
        self.logits = runtime.prefill(prefix)
        self.marks: list[_Mark] = []
        self.model_sounding: dict[tuple[str, int], float] = {}  # notes the model started, still on -> onset beat
        self.profile = PlayerProfile(beats_per_bar)  # what the player played: what answers follow

    @property
    def time(self) -> float:
        """Where the token stream has got to, in beats."""
        return self.encoder.tick / self.tpb

    # --- what the player (or already-played model notes) add ---------------------------
    def add(self, events: Iterable[Event], model: bool = False) -> int:
        """Encode events (time order) and append their tokens; returns tokens added."""
        toks: list[int] = []
        for ev in events:
            toks += self.encoder.add(ev)
            if model:
                self._track_model(ev)
            else:
                self.profile.observe(ev)
        return self._append(toks)

    def advance_to(self, beat: float) -> int:
        """Let time pass (a rest) up to `beat`; returns tokens added."""
        return self._append(self.encoder.advance(max(self.encoder.tick, round(beat * self.tpb))))

    def _append(self, toks: list[int]) -> int:
        if toks:
            for t in toks:
                self.grammar.update(t)
            self.logits = self.rt.append(toks)
        return len(toks)

    def _track_model(self, ev: Event) -> None:
        if isinstance(ev, NoteOn):
            self.model_sounding[(ev.family, ev.pitch)] = ev.time
        elif isinstance(ev, NoteOff):
            self.model_sounding.pop((ev.family, ev.pitch), None)

    # --- generation ---------------------------------------------------------------------
    def generate(
        self,
        start: float,
        end: float,
        shaper: LogitShaper,
        rng: np.random.Generator,
        emit: Callable[[Event], None] = lambda e: None,
        cancelled: Callable[[], bool] = lambda: False,
        first_note: bool = True,
        close: bool = True,
        mark_every: float = 0.25,
        clock: Callable[[], float] | None = None,
    ) -> Answer:
        """Sample from `start` to `end` (beats), emitting each event as soon as it exists.

        `first_note` makes the answer begin with a note exactly at `start` (no leading
        rest, so an answer "on the next bar" is heard on the bar). `close` releases the
        model's notes at `end`; accompaniment, which goes on, leaves them sounding.
        """
        import time as _time

        v = self.vocab
        t0 = (clock or _time.perf_counter)()
        ans = Answer()
        self.advance_to(start)
        held = {(v.family_index[f], p): round(onset * self.tpb) for (f, p), onset in self.model_sounding.items()}
        # the one decode step (engine/row_decoder.py): grammar, guard, density and following the player
        row = RowDecoder(v, shaper, self.grammar, rng, self.profile.heard(self.time), tick=self.encoder.tick,
                         source=self.rt.source, held=held)
        end_tick = round(end * self.tpb)
        next_mark = self.time
        sampled_note = not first_note
        while row.tick < end_tick:
            if cancelled():
                ans.cancelled = True
                break
            if row.tick / self.tpb >= next_mark:
                self._mark()
                next_mark += mark_every
            tok = row.sample(self.logits[0], self._no_end if sampled_note else self._no_wait)
            if ans.first_token_s is None:
                ans.first_token_s = (clock or _time.perf_counter)() - t0
            if v.kind[tok] == WAIT and row.tick + int(v.value[tok]) > end_tick:
                break  # the model rests past the end: rest until the end
            if v.kind[tok] == NOTE and v.vbin[tok] > 0:
                sampled_note = True
            events = row.feed(tok)  # damaged weights: the guard stops this answer with an error, not a flood
            self.logits = self.rt.step([tok])
            ans.tokens += 1
            for ev in events:
                self._model_event(ev, ans, emit)
        self.encoder.advance(row.tick)  # the rests it sampled are in the cache already
        if close and not ans.cancelled:
            self.release_model_notes(end, emit, ans)
        if not ans.cancelled:
            self.advance_to(end)
        return ans

    def release_model_notes(self, beat: float, emit: Callable[[Event], None] = lambda e: None,
                            ans: Answer | None = None) -> list[Event]:
        """Note-offs (in the token stream too) for every note the model left sounding."""
        self.advance_to(beat)
        offs = [NoteOff(self.time, f, p) for f, p in sorted(self.model_sounding)]
        self.add(offs, model=True)
        for ev in offs:
            emit(ev)
            if ans is not None:
                ans.events.append(ev)
        return offs

    def _model_event(self, ev: Event, ans: Answer, emit: Callable[[Event], None]) -> None:
        self.encoder.add(ev)  # keeps the encoder's clock and sounding set in step (tokens already in)
        self._track_model(ev)
        ans.events.append(ev)
        emit(ev)

    @cached_property
    def _no_end(self) -> np.ndarray:
        """Bias forbidding the end token: an answer has a set end, where it rests until
        (as `generate` does offline), so the model may not stop it early."""
        b = np.zeros(len(self.vocab), np.float32)
        b[self.vocab.end] = NEG
        return b

    @cached_property
    def _no_wait(self) -> np.ndarray:
        """Bias forbidding rests too (the answer's first token is a note)."""
        b = self._no_end.copy()
        b[self.vocab.kind == WAIT] = NEG
        return b

    # --- taking back what was not played ------------------------------------------------
    def mark(self) -> None:
        """A point `rewind` can come back to (the session marks after the player's notes)."""
        self._mark()

    def _mark(self) -> None:
        self.marks.append(_Mark(self.time, self.rt.mark(), _copy_encoder(self.encoder), self.grammar.copy(),
                                self.logits.copy(), dict(self.model_sounding)))
        if len(self.marks) > 512:
            del self.marks[:256]

    def rewind(self, beat: float) -> float | None:
        """Back to the latest mark at or before `beat`; returns its beat (None: no such mark,
        or the window slid since -- then nothing changes and the caller keeps going)."""
        while self.marks and self.marks[-1].beat > beat + 1e-9:
            self.marks.pop()
        if not self.marks:
            return None
        m = self.marks[-1]
        if not self.rt.rewind(m.runtime):
            self.marks.clear()
            return None
        self.encoder, self.grammar, self.logits = _copy_encoder(m.encoder), m.grammar.copy(), m.logits.copy()
        self.model_sounding = dict(m.model_sounding)
        self.marks.pop()
        return m.beat


def _copy_encoder(enc: StreamEncoder) -> StreamEncoder:
    """The encoder's state, sharing its (read-only, large) vocabulary: a mark costs ~0.03 ms,
    not the ~5 ms of copying the vocabulary's arrays."""
    return copy.deepcopy(enc, {id(enc.vocab): enc.vocab, id(enc.cfg): enc.cfg})

