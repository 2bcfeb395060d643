"""What the timeline's generation gives back: an `Answer` (one `generate`), a `RankedAnswer`
(best of N) and the `Candidate`s it weighed. Typed records of their own, so the timeline and
the speculation that feeds it (`speculation.py`) both use them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from musebridge.engine.music.events import Event, NoteOn

if TYPE_CHECKING:
    from .timeline import StreamState


@dataclass
class Answer:
    """What one `generate` call produced: events with timeline beats."""

    events: list[Event] = field(default_factory=list)
    tokens: int = 0
    first_token_s: float | None = None  # wall time from call to the first sampled token
    cancelled: bool = False
    speculated: int = 0  # of its tokens, those sampled ahead in the silence (bridge/speculation.py)


@dataclass
class RankedAnswer(Answer):
    """What `generate_ranked` played (the `Answer` fields are the chosen candidate's) and how it chose."""

    chosen: int = 0  # which candidate played (index into `scores`)
    made: int = 1  # candidates sampled
    scores: list[float] = field(default_factory=list)  # one per candidate; empty when only one was made
    sample_s: float = 0.0  # wall time sampling them
    score_s: float = 0.0  # wall time scoring them
    emitted_s: float | None = None  # wall time from call to the chosen events emitted (streamed: None)


@dataclass
class Candidate:
    """One answer `generate_ranked` sampled but did not play (yet)."""

    answer: Answer
    tokens: list[int]  # what it put into the cache after the mark: sampled tokens, then the rest and releases to the end
    prompt: list[int]  # the token history before it (one list, shared by the call's candidates)
    mean_logprob: float | None  # the model's mean log-probability of its sampled tokens (raw logits)
    started: float  # on the clock
    seconds: float  # wall time sampling it
    rng_state: dict  # the generator's state it started from: `generate` from here plays it again
    end: StreamState  # the stream after it

    @property
    def events(self) -> list[Event]:
        return self.answer.events

    @property
    def notes(self) -> int:
        return sum(isinstance(e, NoteOn) for e in self.answer.events)
