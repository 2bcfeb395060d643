"""How the jam picks among candidate answers (`Timeline.generate_ranked`): by the model
folder's critic when it ships one (`critic/`, on ONNX Runtime, no torch), else by the
model's own mean log-likelihood of each candidate.

The critic reads what it reads for `generate --variations`: the tokens before the answer
(here the jam's recent token history) followed by the candidate's, cropped to its context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from musebridge.engine.music.vocab import Vocabulary

from .answers import Candidate


@dataclass(frozen=True)
class Ranker:
    by: str  # "critic" or "likelihood": what the scores are (the session records it)
    score: Callable[[list[Candidate]], list[float]]  # higher is better


def by_likelihood(candidates: list[Candidate]) -> list[float]:
    """The model's mean log-probability of each candidate's sampled tokens."""
    return [-math.inf if c.mean_logprob is None else c.mean_logprob for c in candidates]


LIKELIHOOD = Ranker("likelihood", by_likelihood)


def by_critic(critic) -> Ranker:
    """Rank by an opened critic (`critic_score.open_critic`): P(real) of prompt + candidate."""
    from musebridge.engine.decode.critic_score import critic_scores

    def score(candidates: list[Candidate]) -> list[float]:
        return critic_scores(critic, candidates[0].prompt, [c.tokens for c in candidates]) if candidates else []

    return Ranker("critic", score)


def open_ranker(model: str | Path | None, vocab: Vocabulary, threads: int = 1) -> Ranker:
    """The critic in `model`'s folder (default: the shipped model), its graph built on first
    use and opened now -- not at a phrase end -- on `threads` ORT threads (the jam's worker
    scores between two answers: one); the likelihood ranker when the folder has no critic."""
    from musebridge.engine.training.checkpoint import DEFAULT_MODEL
    from musebridge.engine.decode.critic_score import ClassifierFileError, open_critic

    folder = Path(model or DEFAULT_MODEL) / "critic"
    if not (folder / "classifier.json").exists():
        return LIKELIHOOD
    critic = open_critic(folder, threads)
    if critic.vocab != vocab:
        raise ClassifierFileError(f"critic {folder} uses another vocabulary than the model; re-pack the model "
                                  "with the critic trained for it, or jam without --candidates")
    critic.p_real([[vocab.start] + [vocab.wait(1)] * (critic.context - 1)])  # ORT's first run allocates: not in a jam
    return by_critic(critic)
