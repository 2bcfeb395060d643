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
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable, Iterable

import numpy as np

from musebridge.engine.music.events import Event, NoteOff, NoteOn
from musebridge.engine.decode.runtime import CachedRuntime
from musebridge.engine.decode.follow import PlayerProfile
from musebridge.engine.decode.generate import prefix_families
from musebridge.engine.decode.sampling import NEG, Grammar, LogitShaper
from musebridge.engine.music.tokenizer import StreamEncoder
from musebridge.engine.music.vocab import WAIT, Vocabulary

from . import speculation
from .answers import Answer, Candidate, RankedAnswer  # noqa: F401 (the timeline's records)
from .speculation import SPECULATE_BUDGET_S, SPECULATE_TOKENS, AnswerRun, Speculation

SLIDE_MARGIN = 64  # tokens beyond twice an answer's expected ones that must fit before it starts

# what generate_ranked expects scoring and playing the winner to take, a candidate, until it
# has timed them (the shipped critic reads a window in 5-20 ms on one thread here)
FIRST_FINISH_S = 0.03


@dataclass
class StreamState:
    """What must rewind together with the KV cache, as one object: a mark is one `copy`, a
    rewind one restore. The encoder (the stream's clock and what it holds sounding), the
    grammar, the logits the next token is drawn from, and `model_sounding` -- the notes the
    model's tokens left open (-> onset beat): the stream's view, which a release must write
    as tokens, not what the scheduler sent (that is the output's `NoteTracker`)."""

    encoder: StreamEncoder
    grammar: Grammar
    logits: np.ndarray
    model_sounding: dict[tuple[str, int], float] = field(default_factory=dict)

    def copy(self) -> "StreamState":
        return StreamState(_copy_encoder(self.encoder), self.grammar.copy(), self.logits.copy(), dict(self.model_sounding))


@dataclass
class _Mark:
    beat: float
    runtime: tuple  # the runtime's own mark (cache position, window slides, history)
    stream: StreamState


def jam_families(in_family: str, strengths: dict[str, float]) -> list[str]:
    """The families a jam's prefix names: the player's, then those turned up past the middle
    (a strength above 0.5), less any muted (0): `generate.prefix_families`."""
    return prefix_families([in_family], strengths)


class Timeline:
    """Runtime + encoder + grammar for a whole jam; times are timeline beats (>= 0)."""

    def __init__(self, runtime: CachedRuntime, style: str | None, families: list[str], beats_per_bar: float = 4.0):
        if runtime.vocab.config.time_mode != "beats":
            raise ValueError("the realtime bridge needs a beats-mode vocabulary")
        self.rt = runtime
        self.vocab: Vocabulary = runtime.vocab
        self.tpb = self.vocab.config.ticks_per_beat
        encoder, grammar = StreamEncoder(self.vocab), Grammar(self.vocab)
        prefix = encoder.prefix(style, families)
        for t in prefix:
            grammar.update(t)
        self.stream = StreamState(encoder, grammar, runtime.prefill(prefix))
        self.marks: list[_Mark] = []
        self.profile = PlayerProfile(beats_per_bar)  # what the player played: what answers follow
        # what a ranked answer cost last time (generate_ranked plans by it): tokens per beat of
        # a candidate, and per candidate the time from the last one to the winner played
        self._cost = {"tokens_per_beat": 32.0, "finish_s": FIRST_FINISH_S}
        self.speculation: Speculation | None = None  # an answer sampled ahead (bridge/speculation.py)

    @property
    def time(self) -> float:
        """Where the token stream has got to, in beats (a speculated answer aside: it is not
        there until `generate` takes it over)."""
        return self.speculation.beat if self.speculation is not None else self._beat

    @property
    def _beat(self) -> float:
        """Where the stream itself is, a speculation included."""
        return self.stream.encoder.tick / self.tpb

    @property
    def model_sounding(self) -> dict[tuple[str, int], float]:
        """The notes the model's tokens left open, a speculation aside (as `time`)."""
        return (self.speculation.stream if self.speculation is not None else self.stream).model_sounding

    def drop_speculation(self) -> None:
        """Rewind a speculated answer: the stream is as if it had never been sampled. Every
        change to the stream does this first (the player played on, a rewind, a release)."""
        if self.speculation is not None:
            spec, self.speculation = self.speculation, None
            spec.rewind()

    # --- what the player (or already-played model notes) add ---------------------------
    def add(self, events: Iterable[Event], model: bool = False) -> int:
        """Encode events (time order) and append their tokens; returns tokens added."""
        self.drop_speculation()
        toks: list[int] = []
        for ev in events:
            toks += self.stream.encoder.add(ev)
            if model:
                self._track_model(ev)
            else:
                self.profile.observe(ev)
        return self._append(toks)

    def listen_ahead(self, beat: float) -> None:
        """Read what the player played (key, grid, holds) now, during the silence that ends
        their phrase, so the answer's first token does not wait for it (about 1 ms)."""
        self.profile.heard(beat)

    def advance_to(self, beat: float) -> int:
        """Let time pass (a rest) up to `beat`; returns tokens added."""
        self.drop_speculation()
        return self._advance_to(beat)

    def _advance_to(self, beat: float) -> int:
        return self._append(self.stream.encoder.advance(max(self.stream.encoder.tick, round(beat * self.tpb))))

    def _append(self, toks: list[int]) -> int:
        if toks:
            for t in toks:
                self.stream.grammar.update(t)
            self.stream.logits = self.rt.append(toks)
        return len(toks)

    def make_room_for(self, start: float, end: float) -> None:
        """Slide the window now if the answer from `start` to `end` (beats) might not fit.

        A slide re-prefills three quarters of the context: measured at context 4,096 on 2
        cores, 0.34 s on ONNX Runtime and 1.6 s on eager PyTorch. Between two notes of an answer
        that stall sent the rest late (after a 2,000-note flood, 25-36 messages reached the
        scheduler after they were due); before the answer -- in the phrase-ending silence,
        where the answer is speculated -- it costs no note. A slide also voids the marks a
        barge-in rewinds to, so it is made before the answer's first mark."""
        beats = max(end - start, 0.0)
        room = self.rt.make_room(int(2 * self._cost["tokens_per_beat"] * beats) + SLIDE_MARGIN)
        if room is not None:
            self.stream.logits = room

    def _track_model(self, ev: Event) -> None:
        if isinstance(ev, NoteOn):
            self.stream.model_sounding[(ev.family, ev.pitch)] = ev.time
        elif isinstance(ev, NoteOff):
            self.stream.model_sounding.pop((ev.family, ev.pitch), None)

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
        A speculated answer (`speculate`) that is this one is taken over, not sampled again:
        its held events go out at once and sampling goes on from it (bridge/speculation.py).
        """
        clock = clock or time.perf_counter
        t0 = clock()
        key = (start, end, first_note, mark_every)
        run = speculation.resume(self, key, shaper, rng, emit, cancelled, clock, t0)  # None: none, or rewound
        if run is None:
            run = AnswerRun(self, Answer(), start, end, shaper, rng, first_note, mark_every, clock, t0)
        while run.step(emit, cancelled):
            pass
        ans, row = run.ans, run.row
        self.stream.encoder.advance(row.tick)  # the rests it sampled are in the cache already
        if close and not ans.cancelled:
            self.release_model_notes(end, emit, ans)
        if not ans.cancelled:
            self.advance_to(end)
        return ans

    def speculate(self, start: float, end: float, shaper: LogitShaper, rng: np.random.Generator,
                  first_note: bool = True, mark_every: float = 0.25, tokens: int = SPECULATE_TOKENS,
                  budget_s: float = SPECULATE_BUDGET_S, clock: Callable[[], float] | None = None) -> None:
        """Sample ahead, for `budget_s` of this call, the first `tokens` of the answer a
        `generate(start, end, shaper, rng, ...)` will ask for: during the silence that ends
        a phrase, so the answer's first token is ready when it is due. `rng` moves on as
        that answer's would; anything else that touches the stream first rewinds it.
        """
        speculation.speculate(self, (start, end, first_note, mark_every), shaper, rng, tokens, budget_s,
                              clock or time.perf_counter)

    def release_model_notes(self, beat: float, emit: Callable[[Event], None] = lambda e: None,
                            ans: Answer | None = None) -> list[Event]:
        """Note-offs (in the token stream too) for every note the model left sounding."""
        self.advance_to(beat)
        offs = [NoteOff(self._beat, f, p) for f, p in sorted(self.stream.model_sounding)]
        self.add(offs, model=True)
        for ev in offs:
            emit(ev)
            if ans is not None:
                ans.events.append(ev)
        return offs

    def generate_ranked(
        self,
        start: float,
        end: float,
        shaper: LogitShaper,
        rng: np.random.Generator,
        score: Callable[[list[Candidate]], list[float]],
        candidates: int,
        deadline: float,
        clock: Callable[[], float] | None = None,
        emit: Callable[[Event], None] = lambda e: None,
        cancelled: Callable[[], bool] = lambda: False,
        first_note: bool = True,
        close: bool = True,
        mark_every: float = 0.25,
    ) -> RankedAnswer:
        """The best of up to `candidates` answers from `start` to `end`, as time allows.

        Each candidate is sampled by `generate` with its events held back, then the stream
        is rewound to `start` for the next. `deadline` (on `clock`, default
        `time.perf_counter`) is when the answer must be out: no new candidate starts unless
        one as long as the longest so far, and scoring, would end by then (scoring and
        playing cost what they cost last call), and one still sampling when its time is up
        is dropped. The first is always made: should it still be sampling at the deadline,
        what it has goes out then and the rest as it is sampled, as `generate` streams
        (so a deadline already past streams one answer). `score(candidates)` (higher
        better) picks one; its tokens -- exactly as sampled, not re-encoded from its events
        (the model's rests come in pieces the encoder would merge) -- go back into the
        cache, with the encoder, grammar and sounding notes it ended with: the stream is the
        one a plain `generate` of it leaves. Then its events are emitted in time order.

        Only the mark at `start` survives (a barge-in rewinds there and re-adds what
        sounded). `first_token_s` is the first candidate's (as `generate`'s: the model's
        response time); `emitted_s` says when the chosen events went out.
        """
        clock = clock or time.perf_counter
        t0 = clock()
        if candidates <= 1:
            ans = self.generate(start, end, shaper, rng, emit, cancelled, first_note, close, mark_every, clock)
            return RankedAnswer(**vars(ans), sample_s=clock() - t0)
        cost, beats = self._cost, max(end - start, 1e-9)
        self.advance_to(start)  # (ranked answers are not speculated: this rewinds any speculation)
        self.make_room_for(start, end)  # (before the mark: a slide would void it)
        self._mark()
        base, kept = self.marks[-1], list(self.marks)
        prompt = list(self.rt.history[0])
        made: list[Candidate] = []
        in_cache = None  # which candidate the cache holds (None: none, it is at the mark)
        while True:
            first = not made
            held = _Held(emit if first else None)
            # the first streams from the deadline on; a later one is dropped when its time is up
            watch = _Watch(self, cancelled, clock, deadline - (0.0 if first else cost["finish_s"] * (len(made) + 1)),
                           held.flush if first else None)
            state, t = rng.bit_generator.state, clock()
            ans = self.generate(start, end, shaper, rng, emit=held, cancelled=watch, first_note=first_note,
                                close=close, mark_every=mark_every, clock=clock)
            self.marks = list(kept)  # its own marks: a rewind to them would re-add from the wrong state
            if watch.cancel:
                if held.streaming:  # what went out stays, as when `generate` is cancelled
                    return RankedAnswer(**vars(ans), sample_s=clock() - t0)
                self._restore(base)
                return RankedAnswer(cancelled=True, made=len(made), sample_s=clock() - t0)
            if ans.cancelled:  # a later candidate out of time
                self._restore(base)
                in_cache = None
                break
            slid = self.rt.slides != base.runtime[0]
            made.append(Candidate(ans, list(self.rt.history[0][len(prompt):]) if not slid else [], prompt,
                                  watch.mean(len(prompt), ans.tokens), t, clock() - t, state, self.stream))
            in_cache = len(made) - 1
            if held.streaming:  # the first, out of time: it went out as it came
                return RankedAnswer(**vars(ans), sample_s=clock() - t0)
            longest = max(c.seconds for c in made)
            if slid or len(made) >= candidates or clock() + longest + cost["finish_s"] * (len(made) + 1) > deadline:
                break  # (the window slid under it: no way back, it plays)
            self._restore(base)
        t_score = clock()
        scores = [float(x) for x in score(made)] if len(made) > 1 and not slid else []
        t_play = clock()
        best = int(np.argmax(scores)) if scores else (in_cache if in_cache is not None else 0)
        win = made[best]
        if cancelled():
            self._restore(base)
            return RankedAnswer(cancelled=True, made=len(made), scores=scores, sample_s=t_score - t0,
                                score_s=t_play - t_score)
        if best != in_cache:  # put the winner's tokens into the cache instead
            self._restore(base)
            if win.tokens:
                self.stream.logits = self.rt.append(win.tokens)
            self.stream = replace(win.end, logits=self.stream.logits)
        reply = made[0].answer.first_token_s
        out = RankedAnswer(events=win.answer.events, tokens=win.answer.tokens,
                           first_token_s=None if reply is None else made[0].started - t0 + reply, chosen=best,
                           made=len(made), scores=scores, sample_s=t_score - t0, score_s=t_play - t_score,
                           emitted_s=clock() - t0)
        for ev in win.answer.events:
            emit(ev)
        cost.update(finish_s=(clock() - t_score) / len(made),
                    tokens_per_beat=max(len(c.tokens) for c in made) / beats or cost["tokens_per_beat"])
        return out

    def _model_event(self, ev: Event, ans: Answer, emit: Callable[[Event], None]) -> None:
        self.stream.encoder.add(ev)  # keeps the encoder's clock and sounding set in step (tokens already in)
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
        self.drop_speculation()
        self._mark()

    def _mark(self) -> None:
        self.marks.append(_Mark(self._beat, self.rt.mark(), self.stream.copy()))
        if len(self.marks) > 512:
            del self.marks[:256]

    def rewind(self, beat: float) -> float | None:
        """Back to the latest mark at or before `beat`; returns its beat (None: no such mark,
        or the window slid since -- then nothing changes and the caller keeps going)."""
        self.drop_speculation()
        while self.marks and self.marks[-1].beat > beat + 1e-9:
            self.marks.pop()
        if not self.marks:
            return None
        m = self.marks[-1]
        if not self._restore(m):
            self.marks.clear()
            return None
        self.marks.pop()
        return m.beat

    def _restore(self, m: _Mark) -> bool:
        """Cache and stream state back to mark `m` (False: the window slid since)."""
        if not self.rt.rewind(m.runtime):
            return False
        self.stream = m.stream.copy()  # the mark stays as it was: a later rewind can come back to it
        return True


def _copy_encoder(enc: StreamEncoder) -> StreamEncoder:
    """The encoder's state, sharing its (read-only, large) vocabulary: a mark costs ~0.03 ms,
    not the ~5 ms of copying the vocabulary's arrays."""
    return copy.deepcopy(enc, {id(enc.vocab): enc.vocab, id(enc.cfg): enc.cfg})


class _Held:
    """`emit` for a candidate: its events held back, or -- once `flush`ed -- sent as they come."""

    def __init__(self, emit: Callable[[Event], None] | None):
        self.emit, self.events, self.streaming = emit, [], False

    def __call__(self, ev: Event) -> None:
        if self.streaming:
            self.emit(ev)
        else:
            self.events.append(ev)

    def flush(self) -> None:
        self.streaming = True
        for ev in self.events:
            self.emit(ev)
        self.events = []


class _Watch:
    """`cancelled` for one candidate's `generate`, which asks it before each sampling step --
    when the timeline's logits are the ones the next token is drawn from. Besides the
    caller's cancel (`cancel`) it watches the candidate's time: past `late_at` it calls
    `on_late` once (the first candidate starts streaming) or, without one, stops it
    (`late`). And it reads the log-probability of the token sampled since the last call:
    the model's own likelihood of the candidate, at no extra model call (~20 us a token)."""

    def __init__(self, tl: Timeline, cancelled: Callable[[], bool], clock: Callable[[], float], late_at: float,
                 on_late: Callable[[], None] | None):
        self.tl, self.cancelled, self.clock, self.late_at, self.on_late = tl, cancelled, clock, late_at, on_late
        self.cancel = self.late = False
        self.n = -1  # history length at the last call
        self.logits: np.ndarray | None = None
        self.total, self.count = 0.0, 0

    def __call__(self) -> bool:
        hist = self.tl.rt.history[0]
        self._score(hist, len(hist))
        self.n, self.logits = len(hist), self.tl.stream.logits[0].copy()
        if self.cancelled():
            self.cancel = True
            return True
        if not self.late and self.clock() > self.late_at:
            self.late = True
            if self.on_late is None:
                return True
            self.on_late()
        return False

    def _score(self, hist: list[int], n: int) -> None:
        if self.logits is not None and n == self.n + 1:  # exactly one token since: the one drawn from them
            x = self.logits.astype(np.float64)
            m = x.max()
            self.total += float(x[hist[n - 1]] - m - np.log(np.exp(x - m).sum()))
            self.count += 1

    def mean(self, n0: int, sampled: int) -> float | None:
        """The mean over the `sampled` tokens after history position `n0` (the last one too:
        `generate` may stop right after stepping it, without asking again)."""
        if self.n == n0 + sampled - 1:
            self._score(self.tl.rt.history[0], n0 + sampled)
        return self.total / self.count if self.count else None
