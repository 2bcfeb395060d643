"""What one runtime's rows are: the sizes, the timed loops and the row format `musebridge bench`
reports, shared by our runtimes (`bench`) and the peers (`bench_peers`), which both import this
and never each other."""

from __future__ import annotations

import resource
import time

import numpy as np

PREFILL = (64, 512, 2048)
CONTEXTS = (256, 1024, 4096)
STEPS = 200  # decode steps timed per context: enough that p99 is not simply the max


def _pcts(ms: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max: p99 of 40 samples is nearly the max, so the max is there to show a stall."""
    a = np.array(ms, float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def _row(backend: str, metric: str, n: int, ms: list[float] | float, unit: str = "ms") -> dict:
    """One report row; a single figure (a ratio, a peak, a net average) is its own p50, p99 and max."""
    if isinstance(ms, list):
        p50, p99, top = _pcts(ms)
    else:
        p50 = p99 = top = float(ms)
    return {"backend": backend, "metric": metric, "context_or_tokens": n, "p50": round(p50, 4), "p99": round(p99, 4),
            "max": round(top, 4), "unit": unit}


def _prompt_tokens(vocab, n: int, seed: int = 0) -> list[int]:
    """A dense, valid token stream of n tokens (piano chords and runs) from the encoder."""
    from ..music.events import Note, Piece
    from .generate import prompt_tokens

    rng = np.random.default_rng(seed)
    notes, t = [], 0.0
    while True:
        for p in rng.choice(np.arange(48, 84), size=3, replace=False):
            notes.append(Note(t, 0.5, int(p), int(rng.integers(50, 110)), "piano"))
        t += 0.5
        toks = prompt_tokens(Piece(notes=notes), vocab, None, ["piano"]) if len(notes) % 60 == 0 else None
        if toks is not None and len(toks) >= n + 8:
            return toks[:n]


def runtime_rows(backend: str, rt, vocab) -> list[dict]:
    """Prefill, decode step per context, note append, first token, one sample, realtime factor and
    peak RSS of a `CachedRuntime` (ours, or a peer's running our graphs)."""
    rows: list[dict] = []
    long = _prompt_tokens(vocab, 4096)
    for n in [n for n in PREFILL if n <= rt.context]:
        ms = []
        for _ in range(5):
            t0 = time.perf_counter()
            rt.prefill(long[:n])
            ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(_row(backend, "prefill_ms", n, ms[1:]))
    for c in [c for c in CONTEXTS if c <= rt.context]:
        start = min(c, rt.context - STEPS - 1) - 1
        rt.prefill(long[:start])
        ms = []
        tok = vocab.wait(1)
        for _ in range(STEPS):
            t0 = time.perf_counter()
            rt.step([tok])
            ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(_row(backend, "decode_step_ms", c, ms[10:]))
    # one incoming note while the player plays: a wait and a note-on, appended to 1024 tokens
    mid = min(1024, rt.context // 2)
    rt.prefill(long[:mid])
    note = [vocab.wait(3), vocab.note(0, 60, 5)]
    ms = []
    for _ in range(40):
        m = rt.mark()
        t0 = time.perf_counter()
        rt.append(note)
        ms.append((time.perf_counter() - t0) * 1e3)
        rt.rewind(m)
    rows.append(_row(backend, "append_note_ms", mid, ms[4:]))
    # phrase end -> first continuation token ready: the prompt is already streamed in; what
    # remains is the rest up to the answer's bar line, then one sampled token
    from .follow import PlayerProfile
    from .row_decoder import RowDecoder
    from .sampling import Grammar, LogitShaper, SamplingControls
    from ..music.tokenizer import decode_tokens

    # the default controls, following what the prompt played, through the one decode step
    shaper, grammar = LogitShaper(vocab, SamplingControls(seed=0)), Grammar(vocab)
    for t in long[:mid]:
        grammar.update(t)
    played = decode_tokens(long[:mid], vocab)
    heard = PlayerProfile.of_piece(played).heard(played.end)
    ms = []
    for _ in range(40):
        m = rt.mark()
        t0 = time.perf_counter()
        logits = rt.append([vocab.wait(12)])
        RowDecoder(vocab, shaper, grammar.copy(), shaper.rng, heard).sample(logits[0])
        ms.append((time.perf_counter() - t0) * 1e3)
        rt.rewind(m)
    rows.append(_row(backend, "first_token_ms", mid, ms[4:]))
    # one sampled token on its own (controls, grammar, density and follow biases, top-p): what
    # the decode step costs beyond the runtime, per token
    row = RowDecoder(vocab, shaper, grammar.copy(), shaper.rng, heard)
    ms = []
    for _ in range(200):
        t0 = time.perf_counter()
        row.sample(logits[0])
        ms.append((time.perf_counter() - t0) * 1e3)
    rows.append(_row(backend, "sample_ms", mid, ms[10:]))
    rows.append(_realtime(backend, rt, vocab, long))
    rows.append(_row(backend, "peak_rss_mb", 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "MB"))
    return rows


def _realtime(backend: str, rt, vocab, long: list[int]) -> dict:
    """Musical seconds generated per wall second (120 BPM) with the full sampling loop."""
    from .generate import continue_rows
    from .sampling import Grammar, LogitShaper, SamplingControls

    logits = rt.prefill(long[:512])
    g = Grammar(vocab)
    for t in long[:512]:
        g.update(t)
    t0 = time.perf_counter()
    from .follow import PlayerProfile
    from ..music.tokenizer import decode_tokens

    played = decode_tokens(long[:512], vocab)
    heard = PlayerProfile.of_piece(played).heard(played.end)
    rows = continue_rows(rt, logits, LogitShaper(vocab, SamplingControls()), [g], 8.0, 400, [0], heard)
    wall = time.perf_counter() - t0
    from ..music.tokenizer import StreamDecoder

    dec = StreamDecoder(vocab)
    dec.feed_many(rows[0])
    musical = dec.time * 60.0 / 120.0
    return _row(backend, "realtime_factor", len(rows[0]), musical / wall, "x")



def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


