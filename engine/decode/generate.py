"""Continuations: prompt -> runtime -> sampled tokens -> a Piece, for any runtime.

Generation stops at a musical length, not a token count: a wait that would cross the
end is cut to land exactly on it, and every note still sounding is released there, so
a clip never hangs a note and never runs long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..music.events import Event, Piece, Tempo, TimeSignature
from .runtime import CachedRuntime
from .follow import Heard, PlayerProfile
from .row_decoder import RowDecoder
from .sampling import NEG, ControlError, Grammar, LogitShaper, SamplingControls
from ..music.tokenizer import StreamDecoder, StreamEncoder, decode_tokens, encode_events
from ..music.vocab import WAIT, Vocabulary, is_real, is_whole, ticks_per_unit


@dataclass
class Continuation:
    """One generated answer: its tokens, its events (from the prompt's end) and a Piece."""

    tokens: list[int]
    events: list[Event]
    piece: Piece
    seed: int | None
    info: dict = field(default_factory=dict)


MAX_BARS = 256.0  # one generate call: a long clip of a few minutes
MAX_VARIATIONS = 32  # rows decoded together: each holds a KV cache (33 MB for the shipped model)


def check_bars(bars, label: str = "bars") -> float:
    """A continuation length in bars: a finite number in (0, MAX_BARS]."""
    if not is_real(bars) or not 0 < bars <= MAX_BARS:
        raise ControlError(f"{label} {bars!r} is invalid: use a length between 0 and {MAX_BARS:g} bars")
    return float(bars)


def check_variations(n, label: str = "variations") -> int:
    if not is_whole(n) or not 1 <= n <= MAX_VARIATIONS:
        raise ControlError(f"{label} {n!r} is invalid: use 1 to {MAX_VARIATIONS} continuations")
    return int(n)


def beats_per_bar(piece: Piece) -> float:
    ts = piece.time_signatures[-1] if piece.time_signatures else None
    return 4.0 if ts is None else ts.numerator * 4.0 / ts.denominator


def prefix_families(played: Iterable[str], strengths: Mapping[str, float]) -> list[str]:
    """The families an instrument prefix names: those played, then those turned up past the
    middle (a strength above 0.5), less any muted (0); each once, in that order. The one
    rule for `generate`'s prompts and the jam's timeline."""
    fams = [*played, *(f for f, s in strengths.items() if s > 0.5)]
    return [f for f in dict.fromkeys(fams) if strengths.get(f, 0.5) > 0]


def prompt_tokens(prompt: Piece, vocab: Vocabulary, style: str | None, families: list[str],
                  until: float | None = None) -> list[int]:
    """Prefix + body of the prompt, all its notes released where its last note stops, or
    at `until` (beats) if that is later: where the continuation starts (a bar line)."""
    body, _ = encode_events(prompt, vocab, until)
    return StreamEncoder(vocab).prefix(style, families) + body


def prompt_start(prompt: Piece, until: float | None = None) -> float:
    """Where in the prompt's beats its continuation starts: `prompt_tokens`' rule."""
    return max([n.end for n in prompt.notes] + [until or 0.0])


def continue_rows(
    runtime: CachedRuntime,
    logits: np.ndarray,
    shaper: LogitShaper,
    grammars: list[Grammar],
    end_time: float,
    max_tokens: int,
    seeds: list[int | None],
    heard: Heard | None = None,
    grid_offset: int = 0,
) -> list[list[int]]:
    """Sample every row of `runtime` until its time reaches `end_time`; close open notes.

    `heard` is what the rows follow (the prompt's key, grid, holds and voices) and
    `grid_offset` the tick of the beat the rows start on (0: on a beat).
    """
    v = runtime.vocab
    b = runtime.batch
    per = ticks_per_unit(v)
    rows = [RowDecoder(v, shaper, grammars[r], np.random.default_rng(seeds[r]), heard, source=runtime.source,
                       grid_offset=grid_offset) for r in range(b)]
    no_end = None
    if end_time != float("inf"):  # a clip of a set length: the model may not end it early
        no_end = np.zeros(len(v))
        no_end[v.end] = NEG
    out: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    for _ in range(max_tokens):
        step = np.full(b, v.wait(1), np.int64)  # finished rows idle on a wait (never read back)
        for r, row in enumerate(rows):
            if done[r]:
                continue
            tok = row.sample(logits[r], no_end)
            if tok == v.end and end_time == float("inf"):
                done[r] = True  # open-ended sampling (the critic's data): stop where the model stops
                continue
            if tok == v.end or (v.kind[tok] == WAIT and row.time + v.value[tok] / per > end_time - 1e-9):
                # the model wants to stop, or to wait past the end: rest exactly until the end
                done[r] = True
                tok = _wait_to(v, row.time, end_time)
                if tok is None:
                    continue
            row.feed(tok)
            out[r].append(tok)
            step[r] = tok
        if all(done):
            break
        logits = runtime.step(step)
    for r in range(b):  # release whatever still sounds, at the end
        for t in grammars[r].closing_tokens():
            grammars[r].update(t)
            out[r].append(t)
    return out


def _wait_to(v: Vocabulary, now: float, end: float) -> int | None:
    """The single wait that moves `now` closest to `end` without passing it."""
    ticks = int(round((end - now) * ticks_per_unit(v) + 1e-6))
    return None if ticks <= 0 else v.wait(min(ticks, v.config.max_wait_ticks))


def generate(
    runtime: CachedRuntime,
    prompt: Piece,
    bars: float,
    controls: SamplingControls = SamplingControls(),
    style: str | None = None,
    variations: int = 1,
    max_tokens: int | None = None,
    prompt_end: float | None = None,
) -> list[Continuation]:
    """`variations` continuations of `bars` bars after the prompt (runtime of batch 1).

    The instrument prefix lists the prompt's families plus those the user favours
    (strength > 0.5), minus muted ones (`prefix_families`). The answer starts where the prompt's last note
    stops, or at `prompt_end` (beats) if later, e.g. the bar line after a phrase.
    """
    v = runtime.vocab
    bars = check_bars(bars)
    check_variations(variations)
    families = sorted(prefix_families(prompt.families, controls.strengths), key=lambda f: v.family_index.get(f, 99))
    # no seed asked: draw one, so every clip still records the seed that recalls it
    base = controls.seed if controls.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    seeds = [base + i for i in range(variations)]
    if not prompt.notes and not prompt.tempos and not prompt.time_signatures:
        # from silence: every training piece states its tempo and metre first; so do we
        prompt = Piece(tempos=[Tempo(0.0, 120.0)], time_signatures=[TimeSignature(0.0, 4, 4)], style=prompt.style)
    if families or prompt.notes:
        return _continue(runtime, prompt, bars, controls, style, families, seeds, max_tokens, prompt_end)
    # from silence with no instrument asked for: the model names the band, per variation
    muted = {f for f, s in controls.strengths.items() if s <= 0}
    bands: dict[tuple[str, ...], list[int]] = {}
    for seed in seeds:
        bands.setdefault(tuple(choose_instruments(runtime, style, seed, muted)), []).append(seed)
    out = {}
    for band, group in bands.items():
        for c in _continue(runtime, prompt, bars, controls, style, list(band), group, max_tokens, prompt_end):
            out[c.seed] = c
    return [out[s] for s in seeds]


def choose_instruments(runtime: CachedRuntime, style: str | None, seed: int, muted: set[str] = frozenset()) -> list[str]:
    """The instrument set the model itself puts after the style token, sampled with `seed`.

    Every training piece starts with its style and its sorted instrument tokens; a prefix
    with none is something the model never saw, and it answers by playing a few notes on
    every family. Here it picks at least one family (never a muted one), in id order, and
    stops when the rest of its probability (the body's first token) wins.
    """
    v = runtime.vocab
    rng = np.random.default_rng([seed, 1])  # its own stream: the notes still sample from `seed`
    ids = {v.instrument(f): f for f in v.family_index}
    toks = StreamEncoder(v).prefix(style, [])
    logits = runtime.prefill(toks)[0]
    chosen: list[str] = []
    while True:
        p = np.exp(logits - logits.max())
        p /= p.sum()
        after = max((v.instrument(f) for f in chosen), default=-1)
        options = [t for t in ids if t > after and ids[t] not in muted]
        weights = [float(p[t]) for t in options]
        if chosen:  # stopping: whatever is not an instrument token
            options.append(-1)
            weights.append(max(0.0, 1.0 - float(p[list(ids)].sum())))
        if not options or sum(weights) <= 0:
            break
        w = np.array(weights) / sum(weights)
        pick = int(options[rng.choice(len(options), p=w)])
        if pick < 0:
            break
        chosen.append(ids[pick])
        logits = runtime.step([pick])[0]
    return chosen


def _continue(runtime: CachedRuntime, prompt: Piece, bars: float, controls: SamplingControls, style: str | None,
              families: list[str], seeds: list[int], max_tokens: int | None,
              prompt_end: float | None = None) -> list[Continuation]:
    """One continuation per seed of `prompt` with this instrument prefix (forked when several)."""
    v = runtime.vocab
    variations = len(seeds)
    toks = prompt_tokens(prompt, v, style, families, prompt_end)
    beats = bars * beats_per_bar(prompt)
    bpm = prompt.tempos[-1].bpm if prompt.tempos else 120.0
    end_time = beats if v.config.time_mode == "beats" else beats * 60.0 / bpm
    max_tokens = max_tokens or int(end_time * ticks_per_unit(v) * 8 + 256)
    shaper = LogitShaper(v, controls)
    grammar = Grammar(v)
    for t in toks:
        grammar.update(t)
    logits = runtime.prefill(toks[-runtime.context // 2 :])
    rt = runtime
    if variations > 1:
        rt = runtime.fork(variations)
        logits = np.repeat(logits, variations, axis=0)
    start = prompt_start(prompt, prompt_end)
    heard = PlayerProfile.of_piece(prompt, beats_per_bar(prompt)).heard(start)
    offset = round(start * v.config.ticks_per_beat) if v.config.time_mode == "beats" else 0
    rows = continue_rows(rt, logits, shaper, [grammar.copy() for _ in range(variations)], end_time, max_tokens, seeds,
                         heard, offset)
    tempos = [Tempo(0.0, prompt.tempos[-1].bpm)] if prompt.tempos else []
    last_ts = prompt.time_signatures[-1] if prompt.time_signatures else None
    sigs = [TimeSignature(0.0, last_ts.numerator, last_ts.denominator)] if last_ts else []
    out = []
    for row, seed in zip(rows, seeds):
        dec = StreamDecoder(v)
        events = dec.feed_many(row) + dec.close_all()
        piece = decode_tokens(row, v)
        piece.style = style
        if v.config.time_mode == "beats":
            piece.tempos, piece.time_signatures = list(tempos), list(sigs)
        out.append(Continuation(row, events, piece, seed, {"prompt_tokens": len(toks), "bars": bars,
                                                           "instruments": list(families)}))
    return out
