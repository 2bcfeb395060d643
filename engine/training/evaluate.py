"""Held-out NLL, side by side: the transformer, the LSTM and the n-gram on one split.

Every model scores the same tokens: the split's stream cut into windows of `seq_len`,
each token predicted from what precedes it inside its window (the first token of each
window is not scored). Structure features are withheld, as in a live jam. Reported in
nats per token and bits per note (a note being a note-on: what a listener counts).
`sources` narrows the split to the pieces of some collections (e.g. the band-context
test set, `pop909_band`): their tokens, in stream order, are scored as one stream.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import TokenShards
from ..music.features import features


@dataclass
class EvalRow:
    name: str
    params: int
    nats_per_token: float
    bits_per_note: float
    tokens: int
    seconds: float


def _windows(n: int, seq_len: int) -> list[tuple[int, int]]:
    return [(s, min(s + seq_len, n)) for s in range(0, n - 1, seq_len) if min(s + seq_len, n) - s > 1]


def scored_positions(n: int, seq_len: int) -> np.ndarray:
    return np.concatenate([np.arange(s + 1, e) for s, e in _windows(n, seq_len)])


def eval_tokens(shards: TokenShards, split: str, sources: tuple[str, ...] = ()) -> np.ndarray:
    """The tokens every model scores: the split's stream, or its pieces of `sources`."""
    stream = np.asarray(shards.tokens(split))
    if not sources:
        return stream.astype(np.int64)
    pieces = shards.split_pieces(split, sources)
    return np.concatenate([stream[p["offset"] : p["offset"] + p["tokens"]] for p in pieces]).astype(np.int64)


def eval_torch(model, toks: np.ndarray, vocab, seq_len: int = 2048, batch: int = 4) -> tuple[float, int]:
    """Total nats and scored-token count of a torch model (MuseModel or the LSTM)."""
    import torch
    import torch.nn.functional as F

    feats = features(toks, vocab)
    total, count = 0.0, 0
    wins = _windows(len(toks), seq_len)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(wins), batch):
            group = wins[i : i + batch]
            width = max(e - s for s, e in group)
            t = np.full((len(group), width), vocab.pad, np.int64)
            f = np.zeros((len(group), width, 5), np.int64)
            f[..., 3:] = 128
            mask = np.zeros((len(group), width), bool)
            for r, (s, e) in enumerate(group):
                t[r, : e - s] = toks[s:e]
                f[r, : e - s] = feats[s:e]
                mask[r, 1 : e - s] = True
            tt, ff = torch.from_numpy(t), torch.from_numpy(f)
            logits = model(tt[:, :-1], ff[:, :-1]).float()
            nll = F.cross_entropy(logits.flatten(0, 1), tt[:, 1:].flatten(), reduction="none").view(len(group), -1)
            m = torch.from_numpy(mask[:, 1:])
            total += float(nll[m].sum())
            count += int(m.sum())
    return total, count


def eval_ngram(ngram, toks: np.ndarray, seq_len: int = 2048) -> tuple[float, int]:
    pos = scored_positions(len(toks), seq_len)
    lp = ngram.log_probs(toks, start=1)  # lp[i] is the log prob of token i+1
    return float(-lp[pos - 1].sum()), len(pos)


def row(name: str, params: int, nats: float, count: int, notes: int, seconds: float) -> EvalRow:
    return EvalRow(name, params, nats / count, nats / math.log(2) / max(notes, 1), count, seconds)


def evaluate(data: str | Path, models: dict[str, str | Path], ngram_path: str | Path | None, split: str = "test",
             seq_len: int = 2048, sources: tuple[str, ...] = ()) -> list[EvalRow]:
    """Rows for each named model folder, and the n-gram if given."""
    from .baselines import NGramModel
    from .checkpoint import load_model

    shards = TokenShards(data)
    notes = sum(p["notes"] for p in shards.split_pieces(split, sources))
    toks = eval_tokens(shards, split, sources)
    rows = []
    for name, folder in models.items():
        t0 = time.time()
        model, vocab, _ = load_model(folder)
        if vocab.names[: vocab.style_base] != shards.vocab.names[: shards.vocab.style_base] or len(vocab) != len(shards.vocab):
            from musebridge.errors import MuseBridgeError

            raise MuseBridgeError(f"model {folder} was trained with another vocabulary than {data}; evaluate it on its own data")
        nats, count = eval_torch(model, toks, shards.vocab, seq_len)
        rows.append(row(name, sum(p.numel() for p in model.parameters()), nats, count, notes, time.time() - t0))
    if ngram_path is not None:
        t0 = time.time()
        ng = NGramModel.load(ngram_path)
        nats, count = eval_ngram(ng, toks, seq_len)
        n_params = int(sum(len(k) for k in ng.keys) + len(ng.unigram))
        rows.append(row(f"{ng.order}-gram", n_params, nats, count, notes, time.time() - t0))
    return rows
