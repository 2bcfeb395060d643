"""The jam timeline: streaming prompt, answers on time, rewinds that keep cache and encoder in step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musebridge.bridge.timeline import FIRST_FINISH_S, Timeline
from musebridge.engine.music.events import NoteOff, NoteOn
from musebridge.engine.decode.sampling import LogitShaper, SamplingControls

from conftest import save_tiny_model

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runtime():
    from musebridge.engine.training.checkpoint import load_model
    from musebridge.engine.decode.torch_runtime import TorchRuntime

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
    streamed = tl.stream.logits.copy()
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
    assert not sounding and not tl.stream.model_sounding
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
    live = tl.stream.logits.copy()
    np.testing.assert_allclose(live, runtime.prefill(list(runtime.history[0])), atol=1e-4)


# --- best of N: candidates sampled before the bar line, the best one played -------------------
def ranked(runtime, score, candidates=4, deadline=math.inf, seed=7, **kw):
    """A phrase, then a ranked one-bar answer on the next bar; (timeline, answer, the candidates
    `score` saw, the events emitted, the history length at each emit)."""
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    seen, played, at = [], [], []

    def scorer(cands):
        seen[:] = cands
        return score(cands)

    def emit(ev):
        played.append(ev)
        at.append(len(runtime.history[0]))

    ans = tl.generate_ranked(4.0, 8.0, LogitShaper(runtime.vocab, SamplingControls(seed=seed)), np.random.default_rng(seed),
                             scorer, candidates, deadline, emit=emit, **kw)
    return tl, ans, seen, played, at


def direct(runtime, rng, seed=7):
    """The same phrase and answer by a plain `generate` from `rng`."""
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    ans = tl.generate(4.0, 8.0, LogitShaper(runtime.vocab, SamplingControls(seed=seed)), rng)
    return tl, ans


SCORES = {"most notes": lambda cs: [c.notes for c in cs],
          "first": lambda cs: [-i for i in range(len(cs))],  # the cache holds the last: the winner's tokens go back
          "last": lambda cs: list(range(len(cs)))}  # the cache holds it already


@pytest.mark.parametrize("pick", list(SCORES))
def test_a_ranked_answer_plays_the_best_candidate_and_leaves_the_stream_as_its_own_generate(runtime, pick):
    score = SCORES[pick]
    tl, ans, seen, played, at = ranked(runtime, score)
    assert ans.made == len(seen) == 4 and not ans.cancelled
    assert len({tuple(c.tokens) for c in seen}) == 4  # four different answers, or choosing shows nothing
    assert ans.scores == score(seen) and ans.chosen == int(np.argmax(ans.scores))
    win = seen[ans.chosen]
    if pick == "most notes":
        assert win.notes == max(c.notes for c in seen)
    assert played == win.events == ans.events and ans.tokens == win.answer.tokens
    assert [e.time for e in played] == sorted(e.time for e in played)
    assert min(at) == max(at) == len(runtime.history[0])  # nothing was emitted before the winner was in the stream
    hist, logits, enc, gram, sounding = list(runtime.history[0]), tl.stream.logits.copy(), tl.stream.encoder, tl.stream.grammar, tl.stream.model_sounding
    assert len(tl.marks) == 1 and tl.marks[0].beat == 4.0  # only the answer's start: a barge-in re-adds from there

    rng = np.random.default_rng()
    rng.bit_generator.state = win.rng_state
    ref, ref_ans = direct(runtime, rng)  # the winner as a plain generate makes it
    assert ref_ans.events == win.events
    assert runtime.history[0] == hist  # the same tokens, as sampled (re-encoding its events would merge its rests)
    np.testing.assert_allclose(logits, ref.stream.logits, atol=1e-4)
    assert (enc.tick, enc._sounding, enc._pending_offs, enc._pedal) == \
        (ref.stream.encoder.tick, ref.stream.encoder._sounding, ref.stream.encoder._pending_offs, ref.stream.encoder._pedal)
    np.testing.assert_array_equal(gram.mask, ref.stream.grammar.mask)
    assert sounding == ref.stream.model_sounding == {}
    np.testing.assert_allclose(logits, runtime.prefill(hist), atol=1e-4)


@pytest.mark.parametrize("candidates,deadline", [(4, -math.inf), (1, math.inf)])
def test_no_time_or_one_candidate_streams_one_answer_exactly_as_generate(runtime, candidates, deadline):
    """A deadline already past (or candidates=1): one answer, emitted as it is sampled, the
    very answer `generate` makes; nothing is scored."""
    _, ans, seen, played, at = ranked(runtime, lambda cs: pytest.fail("scored a single answer"), candidates, deadline)
    assert ans.made == 1 and ans.scores == [] and not seen
    hist = list(runtime.history[0])
    assert min(at) < len(hist)  # streamed: the first notes went out before the answer was finished
    _, ref_ans = direct(runtime, np.random.default_rng(7))
    assert played == ans.events == ref_ans.events
    assert runtime.history[0] == hist


class StepClock:
    """A clock that moves 10 ms a sampling step (`generate` asks `cancelled` once a step) and
    at no other time: candidate times are their lengths, whatever the machine's load."""

    def __init__(self):
        self.steps = 0

    def step(self) -> bool:
        self.steps += 1
        return False

    def __call__(self) -> float:
        return self.steps * 0.01


def test_no_candidate_starts_that_would_end_past_the_deadline(runtime):
    """Every candidate after the first starts only when one as long as the longest so far
    (and scoring them) still ends by the deadline; the ranking stops at the first that would not."""
    clock = StepClock()
    _, ans, seen, played, _ = ranked(runtime, lambda cs: [0.0] * len(cs), candidates=8, deadline=2.0, clock=clock,
                                      cancelled=clock.step)
    secs = [c.seconds for c in seen]
    assert 2 <= ans.made == len(seen) < 8, secs
    for k in range(1, len(secs)):  # candidate k started at sum(secs[:k])
        assert seen[k].started == pytest.approx(sum(secs[:k]), abs=0.011)
        assert sum(secs[:k]) + max(secs[:k]) + FIRST_FINISH_S * (k + 1) <= 2.0
    assert sum(secs) + max(secs) + FIRST_FINISH_S * (len(secs) + 1) > 2.0
    assert played == seen[ans.chosen].events


def test_a_first_candidate_still_sampling_at_the_deadline_goes_out_from_then_on(runtime):
    clock = StepClock()
    tl, ans, _, played, at = ranked(runtime, lambda cs: pytest.fail("one answer: nothing to rank"), candidates=4,
                                       deadline=0.2, clock=clock, cancelled=clock.step)
    n0 = tl.marks[0].runtime[2][0]  # the history at the answer's start
    hist = list(runtime.history[0])
    assert ans.made == 1 and ans.tokens > 30  # so the deadline (20 steps) fell inside it
    assert at[0] == n0 + 20 and max(at) > at[0]  # held until the deadline, then out as sampled
    _, ref_ans = direct(runtime, np.random.default_rng(7))
    assert played == ans.events == ref_ans.events and runtime.history[0] == hist


def test_a_later_candidate_out_of_time_is_dropped_and_the_one_before_plays(runtime):
    """Candidate 2 may start (one as long as the first would fit) but runs longer: at its
    time it stops, the stream goes back, and the first one plays, put back exactly."""
    for seed in range(7, 30):  # a seed whose second answer is well longer than its first
        clock = StepClock()
        _, _, dry, _, _ = ranked(runtime, lambda cs: [0.0] * len(cs), candidates=2, seed=seed, clock=clock,
                                 cancelled=clock.step)
        s1, s2 = dry[0].seconds, dry[1].seconds
        if s2 > s1 + 3 * FIRST_FINISH_S + 0.05:
            break
    else:
        pytest.fail("no seed with a long second answer")
    clock = StepClock()
    deadline = 2 * s1 + 3 * FIRST_FINISH_S + 0.005  # room for a second as long as the first, not for this one
    tl, ans, _, played, _ = ranked(runtime, lambda cs: pytest.fail("one answer: nothing to rank"), candidates=4,
                                      deadline=deadline, seed=seed, clock=clock, cancelled=clock.step)
    assert ans.made == 1 and played == dry[0].events
    assert ans.sample_s <= deadline - 2 * FIRST_FINISH_S + 0.011  # stopped at its time: room left to play the first
    hist, logits = list(runtime.history[0]), tl.stream.logits.copy()
    ref, _ = direct(runtime, np.random.default_rng(seed), seed=seed)
    assert runtime.history[0] == hist
    np.testing.assert_allclose(logits, ref.stream.logits, atol=1e-4)


def test_a_cancel_while_ranking_plays_nothing_and_leaves_the_stream_at_the_answers_start(runtime):
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    tl.advance_to(4.0)
    before, logits = list(runtime.history[0]), tl.stream.logits.copy()
    steps = [0]

    def barge():
        steps[0] += 1
        return steps[0] > 150  # a one-bar answer is ~50-90 steps: this is the second or third candidate

    played = []
    ans = tl.generate_ranked(4.0, 8.0, LogitShaper(runtime.vocab, SamplingControls(seed=3)), np.random.default_rng(3),
                             lambda cs: pytest.fail("scored a cancelled answer"), 8, math.inf, emit=played.append,
                             cancelled=barge)
    assert ans.cancelled and ans.made >= 2 and not ans.events and not played
    assert runtime.history[0] == before and tl.time == 4.0 and not tl.stream.model_sounding
    np.testing.assert_array_equal(tl.stream.logits, logits)


def test_a_candidates_mean_logprob_is_the_models_likelihood_of_its_sampled_tokens(runtime):
    from musebridge.bridge.ranking import LIKELIHOOD

    _, ans, seen, _, _ = ranked(runtime, LIKELIHOOD.score, candidates=3)
    assert ans.scores == [c.mean_logprob for c in seen] and ans.chosen == int(np.argmax(ans.scores))
    for c in seen:  # teacher-forced: the prompt, then its sampled tokens one by one
        logits, lps = runtime.prefill(c.prompt), []
        for tok in c.tokens[: c.answer.tokens]:
            x = logits[0].astype(np.float64)
            lps.append(x[tok] - x.max() - np.log(np.exp(x - x.max()).sum()))
            logits = runtime.step([tok])
        assert c.mean_logprob == pytest.approx(float(np.mean(lps)), abs=1e-4)


def test_the_shipped_critic_ranks_the_candidates_after_the_jams_recent_tokens(runtime, tmp_path):
    from musebridge.bridge.ranking import LIKELIHOOD, open_ranker
    from musebridge.engine.training.checkpoint import DEFAULT_MODEL
    from musebridge.engine.decode.critic_score import open_critic

    ranker = open_ranker(None, runtime.vocab)
    assert ranker.by == "critic"
    _, ans, seen, played, _ = ranked(runtime, ranker.score, candidates=3)
    critic = open_critic(DEFAULT_MODEL / "critic", 1)
    expect = critic.p_real([c.prompt + c.tokens for c in seen])  # what it reads: the stream so far, then the answer
    np.testing.assert_allclose(ans.scores, expect, atol=1e-6)
    assert len(set(ans.scores)) == 3 and all(0 < s < 1 for s in ans.scores)
    assert ans.chosen == int(np.argmax(expect)) and played == seen[ans.chosen].events
    assert open_ranker(tmp_path, runtime.vocab) is LIKELIHOOD  # a model folder without critic/


def test_ranking_near_the_end_of_the_context_slides_first_and_still_ranks(tmp_path):
    """`generate_ranked` makes room before it marks: a window sliding under a candidate
    would leave nothing to rewind to (one candidate, played as it came)."""
    from musebridge.engine.training.checkpoint import load_model
    from musebridge.engine.decode.torch_runtime import TorchRuntime

    # a random model: its answers are 10-150 tokens, whatever their length; a slide keeps 1536 of 2048
    model, vocab, _ = load_model(save_tiny_model(tmp_path, context=2048))
    shaper = LogitShaper(vocab, SamplingControls(seed=1))
    made = {}
    for room in (True, False):
        rt = TorchRuntime(model, vocab)
        if not room:
            rt.make_room = lambda n: None
        tl = Timeline(rt, None, ["piano"])
        tl.add([NoteOn(0.0, "piano", 60, 90), NoteOff(0.25, "piano", 60)])
        tl.generate_ranked(1.0, 1.5, shaper, np.random.default_rng(0), lambda cs: [0.0] * len(cs), 2, math.inf)
        notes, t = [], 2.0
        while len(notes) < rt.context - 20 - rt.position:  # the player fills the context to near its end
            notes += [NoteOn(t, "piano", 60 + int(t * 2) % 12, 90), NoteOff(t + 0.25, "piano", 60 + int(t * 2) % 12)]
            t += 0.5
        tl.add(notes)
        while rt.position < rt.context - 8:
            tl.add([NoteOn(t, "piano", 62, 90), NoteOff(t + 0.25, "piano", 62)])
            t += 0.5
        slides, start = rt.slides, math.ceil(t) + 1
        ans = tl.generate_ranked(start, start + 0.5, shaper, np.random.default_rng(1),
                                 lambda cs: [len(c.tokens) for c in cs], 3, math.inf)
        made[room] = ans.made
        if room:
            assert rt.slides == slides + 1  # once, before the mark
            # the cache is what the kept tokens and their feature rows give when run from scratch
            fresh = TorchRuntime(model, vocab)
            hist, feats = np.array([rt.history[0]]), np.array([np.stack(rt.feature_history[0])])
            logits = None
            for s in range(0, hist.shape[1], 512):
                logits = fresh._run(hist[:, s : s + 512], feats[:, s : s + 512], s)
            np.testing.assert_allclose(tl.stream.logits, logits, atol=1e-4)
    assert made == {True: 3, False: 1}


def test_marks_taken_while_answering_are_at_the_streams_own_time(runtime):
    """A mark after rests the model sampled (with no event yet) must record the stream's time,
    not the encoder's last event: a rewind there would otherwise hear the player late."""
    from musebridge.engine.music.tokenizer import StreamDecoder

    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    tl.generate(4.0, 12.0, LogitShaper(runtime.vocab, SamplingControls(seed=5)), np.random.default_rng(5), close=False)
    assert len(tl.marks) > 10
    for m in tl.marks:
        dec = StreamDecoder(runtime.vocab)
        dec.feed_many(runtime.history[0][: m.runtime[2][0]])
        assert dec.time == pytest.approx(m.beat), "a mark lags the stream"


def test_a_mark_is_one_copy_of_the_stream_state_and_a_rewind_one_restore(runtime):
    tl = Timeline(runtime, "pop", ["piano"])
    tl.add(phrase())
    tl.advance_to(4.0)
    tl.mark()
    m, state = tl.marks[-1], tl.stream
    hist, logits, mask = list(runtime.history[0]), state.logits.copy(), state.grammar.mask.copy()
    assert m.stream is not state and m.stream.encoder is not state.encoder  # a copy, not the live objects
    tl.add([NoteOn(4.5, "bass", 36, 90)], model=True)
    assert tl.stream.model_sounding == {("bass", 36): 4.5} and m.stream.model_sounding == {}
    assert tl.rewind(4.0) == 4.0
    assert runtime.history[0] == hist and tl.time == 4.0 and tl.stream.model_sounding == {}
    np.testing.assert_array_equal(tl.stream.logits, logits)
    np.testing.assert_array_equal(tl.stream.grammar.mask, mask)
    assert tl.stream is not m.stream and not tl.marks  # restored as a copy; the mark is used up
