"""The answer sampled ahead in the phrase-ending silence: taken over, it is the answer a plain
`generate` samples; rewound, the stream is the one that never speculated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from musebridge.bridge.speculation import SPECULATE_TOKENS
from musebridge.bridge.timeline import Timeline
from musebridge.engine.decode.sampling import LogitShaper, SamplingControls
from musebridge.engine.music.events import NoteOn

from test_bridge_timeline import phrase

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runtime():
    from musebridge.engine.training.checkpoint import load_model
    from musebridge.engine.decode.torch_runtime import TorchRuntime

    model, vocab, _ = load_model()
    return TorchRuntime(model, vocab)


def jam(runtime) -> Timeline:
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    return tl


def sampling(runtime, seed: int = 7, **controls) -> tuple[LogitShaper, np.random.Generator]:
    return LogitShaper(runtime.vocab, SamplingControls(seed=seed, **controls)), np.random.default_rng(seed)


def speculate_all(tl: Timeline, start: float, end: float, shaper, rng) -> None:
    """Speculate as the worker does, wake after wake, until its tokens are ready."""
    for _ in range(50):
        tl.speculate(start, end, shaper, rng, budget_s=1.0)
    assert tl.speculation is not None and tl.speculation.run.ans.tokens == SPECULATE_TOKENS


def stream_of(tl: Timeline, runtime) -> dict:
    """Everything a rewind must restore: the cache's tokens, the encoder, the grammar, the logits."""
    s = tl.stream
    enc = {k: repr(v) for k, v in vars(s.encoder).items() if k not in ("vocab", "cfg", "tempo_map", "stats")}
    return {"history": list(runtime.history[0]), "position": runtime.position, "tick": s.encoder.tick,
            "encoder": enc, "model_sounding": dict(s.model_sounding),
            "mask": s.grammar.mask.copy(), "grammar_sounding": set(s.grammar.sounding),
            "pedaled": list(s.grammar.pedaled), "logits": s.logits.copy(), "marks": [m.beat for m in tl.marks]}


def assert_same_stream(a: dict, b: dict) -> None:
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def plain(runtime, start=4.0, end=8.0, seed=7, **controls):
    """The answer without speculation: (events emitted, answer, stream after, generator state after)."""
    tl = jam(runtime)
    shaper, rng = sampling(runtime, seed, **controls)
    out: list = []
    ans = tl.generate(start, end, shaper, rng, emit=out.append)
    return out, ans, stream_of(tl, runtime), rng.bit_generator.state


def test_a_speculated_answer_is_the_plain_one_and_its_first_tokens_are_not_sampled_again(runtime):
    want, want_ans, want_stream, want_rng = plain(runtime)
    tl = jam(runtime)
    shaper, rng = sampling(runtime)
    was = tl.time
    speculate_all(tl, 4.0, 8.0, shaper, rng)
    assert tl.time == was < 4.0  # the stream is not at the answer until it takes it
    ahead = len(runtime.history[0])
    out, at = [], []
    ans = tl.generate(4.0, 8.0, shaper, rng, emit=lambda e: (out.append(e), at.append(len(runtime.history[0]))))
    assert ans.speculated == SPECULATE_TOKENS and tl.speculation is None
    assert at[0] == ahead  # its first events went out before the answer sampled anything more
    assert ans.first_token_s is not None and ans.first_token_s < 0.002  # ready when asked for (no model call)
    assert out == want and ans.events == want_ans.events and ans.tokens == want_ans.tokens
    assert_same_stream(stream_of(tl, runtime), want_stream)
    assert rng.bit_generator.state == want_rng


def test_the_player_playing_on_rewinds_the_speculation_to_the_stream_that_never_speculated(runtime):
    note = [NoteOn(3.0, "piano", 62, 90)]
    tl = jam(runtime)
    tl.mark()
    shaper, rng = sampling(runtime)
    before, n = rng.bit_generator.state, len(runtime.history[0])
    speculate_all(tl, 4.0, 8.0, shaper, rng)
    assert len(runtime.history[0]) > n + SPECULATE_TOKENS and rng.bit_generator.state != before
    tl.add(note)
    assert tl.speculation is None and rng.bit_generator.state == before
    got = stream_of(tl, runtime)
    never = jam(runtime)
    never.mark()
    never.add(note)
    assert_same_stream(got, stream_of(never, runtime))


def test_a_rewound_speculation_leaves_the_next_answer_the_plain_one(runtime):
    """Rewound (here by a mark), then answered: exactly the answer a jam that never speculated plays."""
    want, want_ans, want_stream, _ = plain(runtime)
    tl = jam(runtime)
    shaper, rng = sampling(runtime)
    speculate_all(tl, 4.0, 8.0, shaper, rng)
    tl.mark()
    tl.marks.pop()
    out: list = []
    ans = tl.generate(4.0, 8.0, shaper, rng, emit=out.append)
    assert ans.speculated == 0 and out == want
    assert_same_stream(stream_of(tl, runtime), want_stream)


@pytest.mark.parametrize("change", ["start line", "controls", "generator", "cancelled"])
def test_an_answer_unlike_the_speculation_is_sampled_from_the_rewound_stream(runtime, change):
    start = 8.0 if change == "start line" else 4.0
    controls = {"temperature": 0.7} if change == "controls" else {}
    want, want_ans, want_stream, _ = plain(runtime, start, start + 4.0, seed=9 if change == "generator" else 7,
                                          **controls)
    if change == "cancelled":  # cancelled before its first step: nothing played, the stream at the start
        tl = jam(runtime)
        shaper, rng = sampling(runtime)
        want_cancel = tl.generate(4.0, 8.0, shaper, rng, cancelled=lambda: True)
        want_stream = stream_of(tl, runtime)
    tl = jam(runtime)
    shaper, rng = sampling(runtime)
    speculate_all(tl, 4.0, 8.0, shaper, rng)
    if change == "controls":
        shaper.set_controls(SamplingControls(seed=7, **controls))
    if change == "generator":
        rng = np.random.default_rng(9)
    out: list = []
    ans = tl.generate(start, start + 4.0, shaper, rng, emit=out.append, cancelled=lambda: change == "cancelled")
    assert ans.speculated == 0 and tl.speculation is None
    if change == "cancelled":
        assert ans.cancelled and not out and ans.events == want_cancel.events == []
    else:
        assert out == want and ans.events == want_ans.events
    assert_same_stream(stream_of(tl, runtime), want_stream)


def test_speculation_samples_within_its_budget_a_wake(runtime):
    """One token per wake when each costs the whole budget; the setup wake samples none; never
    more than its tokens."""
    tl = jam(runtime)
    shaper, rng = sampling(runtime)
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731  (every reading one second later)
    made = []
    for _ in range(SPECULATE_TOKENS + 3):
        tl.speculate(4.0, 8.0, shaper, rng, budget_s=0.5, clock=clock)
        made.append(tl.speculation.run.ans.tokens)
    assert made == [0, *range(1, SPECULATE_TOKENS + 1), SPECULATE_TOKENS, SPECULATE_TOKENS]


def test_near_the_window_slide_the_speculation_slides_first_and_the_answer_never_slides(runtime):
    """A slide re-prefills three quarters of the context (0.34 s on ONNX Runtime, 1.6 s on eager
    PyTorch at 4,096 here): between an answer's notes it sent the rest late. Near it, the
    speculation slides in the silence, and the answer it hands over plays without one."""
    tl, at = full_jam(runtime)
    shaper, rng = sampling(runtime)
    slides = runtime.slides
    speculate_all(tl, at, at + 4.0, shaper, rng)
    assert runtime.slides == slides + 1
    ans = tl.generate(at, at + 4.0, shaper, rng)
    assert runtime.slides == slides + 1 and ans.tokens > SPECULATE_TOKENS


def full_jam(runtime) -> tuple[Timeline, float]:
    """A jam that has played until its window is within 64 tokens of full, and the beat after."""
    tl = jam(runtime)
    slides = runtime.slides
    at = 2.0
    per = tl.add(phrase(at))  # tokens a phrase (of 2 beats) takes
    batch = (runtime.context - 200 - runtime.position) // per
    tl.add([ev for k in range(batch) for ev in phrase(at + 2.0 * (k + 1))])  # one append: a fast prefill
    at += 2.0 * (batch + 1)
    while runtime.position < runtime.context - 64:
        tl.add(phrase(at))
        at += 2.0
    assert runtime.slides == slides  # (filled, not slid)
    return tl, at


def test_an_answer_not_speculated_slides_before_its_first_note_not_between_them(runtime):
    tl, at = full_jam(runtime)
    shaper, rng = sampling(runtime)
    slides = runtime.slides
    marks = []
    tl.generate(at, at + 4.0, shaper, rng, emit=lambda e: marks.append(runtime.slides))
    assert runtime.slides == slides + 1 and marks and set(marks) == {slides + 1}
