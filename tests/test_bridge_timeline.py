"""The jam timeline: streaming prompt, answers on time, rewinds that keep cache and encoder in step."""

from __future__ import annotations

import numpy as np
import pytest

from musebridge.bridge.timeline import Timeline
from musebridge.engine.events import NoteOff, NoteOn
from musebridge.engine.sampling import LogitShaper, SamplingControls

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runtime():
    from musebridge.engine.checkpoint import load_model
    from musebridge.engine.torch_runtime import TorchRuntime

    model, vocab, _ = load_model()
    return TorchRuntime(model, vocab)


def phrase(start: float = 0.0) -> list:
    evs = []
    for i, p in enumerate([60, 64, 67, 72]):
        evs += [NoteOn(start + i * 0.5, "piano", p, 90), NoteOff(start + i * 0.5 + 0.4, "piano", p)]
    return sorted(evs, key=lambda e: e.time)


def test_streamed_phrase_equals_one_prefill(runtime):
    tl = Timeline(runtime, "pop", ["piano"])
    for ev in phrase():
        tl.add([ev])
    streamed = tl.logits.copy()
    hist = list(runtime.history[0])
    logits = runtime.prefill(hist)
    np.testing.assert_allclose(streamed, logits, atol=1e-4)


def test_answer_starts_with_a_note_on_the_bar_and_closes_its_notes(runtime):
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    shaper = LogitShaper(runtime.vocab, SamplingControls(temperature=1.0, seed=3))
    ans = tl.generate(4.0, 8.0, shaper, np.random.default_rng(3))
    ons = [e for e in ans.events if isinstance(e, NoteOn)]
    assert ons and ons[0].time == pytest.approx(4.0)
    assert all(4.0 <= e.time <= 8.0 + 1e-9 for e in ans.events)
    sounding = set()
    for e in ans.events:
        if isinstance(e, NoteOn):
            sounding.add((e.family, e.pitch))
        elif isinstance(e, NoteOff):
            sounding.discard((e.family, e.pitch))
    assert not sounding and not tl.model_sounding
    assert tl.time == pytest.approx(8.0)
    assert runtime.position == len(runtime.history[0])


def test_rewind_then_readd_keeps_the_cache_exact(runtime):
    """Barge-in: rewind into an answer, re-add what was played plus the player's note; the
    cache then gives the logits a full recompute of the same token history gives."""
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    shaper = LogitShaper(runtime.vocab, SamplingControls(seed=5))
    ans = tl.generate(4.0, 8.0, shaper, np.random.default_rng(5), close=False)
    assert len(runtime.history[0]) > 20
    cut = 5.0
    back = tl.rewind(cut)
    assert back is not None and 4.0 <= back <= cut
    played = [e for e in ans.events if back <= e.time <= cut]
    tl.add(played, model=True)
    tl.add([NoteOn(cut, "piano", 48, 100)])
    assert tl.time == pytest.approx(cut)
    assert runtime.position == len(runtime.history[0])
    live = tl.logits.copy()
    np.testing.assert_allclose(live, runtime.prefill(list(runtime.history[0])), atol=1e-4)
