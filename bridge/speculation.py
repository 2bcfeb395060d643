"""The answer sampled ahead: its first tokens are ready before the phrase has ended.

A phrase ends after `silence_beats` of quiet; the answer then starts on the next bar line.
Waiting for the silence to be complete before appending the rest up to that line, building
the row decoder and sampling would put all of it (a few ms to tens of ms on a loaded
machine) between the phrase end and the first token. So during the silence's second half
the session speculates (`Timeline.speculate`): it samples the answer it would play --
same start line, shaper, generator and heard profile -- into the stream, a few tokens per
worker wake, its events held back. When the answer is due and nothing changed,
`Timeline.generate` takes the speculation over (`resume`): the held events go out and
sampling goes on from there, so the answer is the one a plain `generate` samples. If the
player plays on, a control changes or the start line moves first, the stream rewinds to
where it was (`Speculation.rewind`: cache, encoder, grammar, marks and generator), as if
nothing had been sampled.

`AnswerRun` is the answer loop itself, one token per `step`: `generate` and a speculation
run the same code, which is what makes the two answers the same.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from musebridge.engine.decode.row_decoder import RowDecoder
from musebridge.engine.decode.sampling import LogitShaper
from musebridge.engine.music.events import Event
from musebridge.engine.music.vocab import NOTE, WAIT

from .answers import Answer

if TYPE_CHECKING:
    from .timeline import Timeline

SPECULATE_TOKENS = 8  # the first tokens are what the answer waits for; the rest it samples as it plays
SPECULATE_BUDGET_S = 0.002  # sampling per worker wake: input arriving meanwhile waits at most about this
ROOM = 128  # tokens that must fit before the window slides: a rewind cannot cross a slide


class AnswerRun:
    """One answer from `start` to `end`, sampled a token per `step` into the timeline's stream.

    Construction appends the rest up to `start` and builds the row decoder (grammar, guard,
    density, following the player: engine/decode/row_decoder.py) on the notes the model holds."""

    def __init__(self, tl: "Timeline", ans: "Answer", start: float, end: float, shaper: LogitShaper,
                 rng: np.random.Generator, first_note: bool, mark_every: float, clock: Callable[[], float],
                 t0: float):
        self.tl, self.ans, self.mark_every, self.clock, self.t0 = tl, ans, mark_every, clock, t0
        tl._advance_to(start)
        tl.make_room_for(start, end)  # a slide between its notes would send the rest late
        tpb = tl.tpb
        held = {(tl.vocab.family_index[f], p): round(onset * tpb) for (f, p), onset in tl.stream.model_sounding.items()}
        self.row = RowDecoder(tl.vocab, shaper, tl.stream.grammar, rng, tl.profile.heard(tl._beat),
                              tick=tl.stream.encoder.tick, source=tl.rt.source, held=held)
        self.end_tick = round(end * tpb)
        self.next_mark = tl._beat
        self.sampled_note = not first_note  # until the first note, no rest: the answer is heard on its line
        self.done = False  # sampled to its end (or cancelled): no more steps

    def step(self, emit: Callable[[Event], None], cancelled: Callable[[], bool]) -> bool:
        """Sample and feed one token, emitting its events; False once the answer is done."""
        tl, row, v = self.tl, self.row, self.tl.vocab
        if self.done or row.tick >= self.end_tick:
            self.done = True
            return False
        if cancelled():
            self.ans.cancelled = self.done = True
            return False
        if row.tick / tl.tpb >= self.next_mark:
            tl.stream.encoder.advance(row.tick)  # rests sampled since the last event: a mark is at the stream's time
            tl._mark()
            self.next_mark += self.mark_every
        tok = row.sample(tl.stream.logits[0], tl._no_end if self.sampled_note else tl._no_wait)
        if self.ans.first_token_s is None:
            self.ans.first_token_s = self.clock() - self.t0
        if v.kind[tok] == WAIT and row.tick + int(v.value[tok]) > self.end_tick:
            self.done = True  # the model rests past the end: rest until the end
            return False
        if v.kind[tok] == NOTE and v.vbin[tok] > 0:
            self.sampled_note = True
        events = row.feed(tok)  # damaged weights: the guard stops this answer with an error, not a flood
        tl.stream.logits = tl.rt.step([tok])
        self.ans.tokens += 1
        for ev in events:
            tl._model_event(ev, self.ans, emit)
        return True


class Speculation:
    """An answer's first tokens sampled ahead into the stream, its events held back, and the
    way back: the stream, runtime mark, timeline marks and generator state from before it."""

    def __init__(self, tl: "Timeline", key: tuple, shaper: LogitShaper, rng: np.random.Generator):
        self.tl, self.key, self.shaper, self.rng = tl, key, shaper, rng
        self.controls = shaper.controls
        self.beat = tl._beat  # where the stream was: what `Timeline.time` says meanwhile
        self.runtime, self.stream, self.marks = tl.rt.mark(), tl.stream.copy(), list(tl.marks)
        self.rng_before = rng.bit_generator.state
        self.held: list[Event] = []
        start, end, first_note, mark_every = key
        self.run = AnswerRun(tl, Answer(), start, end, shaper, rng, first_note, mark_every, time.perf_counter,
                             time.perf_counter())
        self.rng_after = rng.bit_generator.state

    def matches(self, key: tuple, shaper: LogitShaper, rng: np.random.Generator) -> bool:
        """Would the answer asked for now sample exactly these tokens? Same start, end and
        rules, the same shaper under the same controls, the same generator where it left it."""
        return (key == self.key and shaper is self.shaper and shaper.controls == self.controls and rng is self.rng
                and rng.bit_generator.state == self.rng_after)

    def sample(self, tokens: int, budget_s: float, clock: Callable[[], float]) -> None:
        """Sample on until `tokens` are ready or `budget_s` of this call is spent (one at least)."""
        t_end = clock() + budget_s
        rt = self.tl.rt
        while self.run.ans.tokens < tokens and rt.position + 1 < rt.context:
            if not self.run.step(self.held.append, lambda: False):
                break
            if clock() >= t_end:
                break
        self.rng_after = self.rng.bit_generator.state

    def rewind(self) -> None:
        """The stream exactly as if this had never been sampled."""
        tl = self.tl
        if not tl.rt.rewind(self.runtime):  # cannot happen: `Timeline.speculate` leaves room
            raise RuntimeError("the model's window slid under a speculated answer: its stream cannot rewind")
        tl.stream = self.stream.copy()
        tl.marks = list(self.marks)
        self.rng.bit_generator.state = self.rng_before

    def resume(self, emit: Callable[[Event], None], clock: Callable[[], float], t0: float) -> AnswerRun:
        """Hand the answer to `generate` (called at `t0`): its held events go out now, and its
        first token counts as ready now, when the answer has it."""
        run = self.run
        run.clock, run.t0 = clock, t0
        run.ans.speculated = run.ans.tokens
        if run.ans.first_token_s is not None:
            run.ans.first_token_s = clock() - t0
        for ev in self.held:
            emit(ev)
        self.held = []
        return run


def speculate(tl: "Timeline", key: tuple, shaper: LogitShaper, rng: np.random.Generator, tokens: int,
              budget_s: float, clock: Callable[[], float]) -> None:
    """`Timeline.speculate`: go on with the speculation for `key`, or start it (rewinding
    one that no longer matches). Near the window's slide it slides first: the answer then
    fits, and no slide stalls it between its notes."""
    spec = tl.speculation
    if spec is not None and not spec.matches(key, shaper, rng):
        tl.drop_speculation()
        spec = None
    if spec is None:
        if tl.rt.position + ROOM + tokens > tl.rt.context:
            tl.make_room_for(key[0], key[1])  # slide now, in the silence, not between the answer's notes
        if tl.rt.position + ROOM + tokens > tl.rt.context:
            return  # (sliding freed nothing: nothing to speculate across)
        t0 = clock()
        spec = tl.speculation = Speculation(tl, key, shaper, rng)
        budget_s -= clock() - t0  # the rest to the line and the row decoder came out of this wake's budget
        if budget_s <= 0:
            return
    if not spec.run.done and spec.run.ans.tokens < tokens:
        spec.sample(tokens, budget_s, clock)


def resume(tl: "Timeline", key: tuple, shaper: LogitShaper, rng: np.random.Generator,
           emit: Callable[[Event], None], cancelled: Callable[[], bool], clock: Callable[[], float],
           t0: float) -> AnswerRun | None:
    """The speculated answer, if it is the one asked for (else the stream rewinds: None)."""
    spec = tl.speculation
    if spec is None:
        return None
    if cancelled() or not spec.matches(key, shaper, rng):
        tl.drop_speculation()
        return None
    tl.speculation = None
    return spec.resume(emit, clock, t0)
