"""The jam record without ports or a model: the roll's notes (re-strikes, early releases,
snapshots), the answer records (kept, looked up, made into clips), what of a cancelled
answer sounded, and the figures."""

from __future__ import annotations

from musebridge.bridge.clips import clip_from_answer
from musebridge.bridge.jam_record import AnswerRecord, JamRecord, LiveAnswer, RollNote
from musebridge.engine.music.events import NoteOff, NoteOn


def test_the_roll_opens_and_ends_notes_and_a_restruck_key_ends_the_first():
    r = JamRecord()
    r.note("user", "piano", 60, 1.0, True, 90)
    r.note("user", "piano", 60, 1.5, True, 80)  # struck again before its release
    r.note("user", "piano", 60, 2.0, False)
    r.note("user", "piano", 62, 2.0, False)  # a release with no note: nothing
    assert r.roll_snapshot() == [RollNote("user", "piano", 60, 1.0, 1.5, 90), RollNote("user", "piano", 60, 1.5, 2.0, 80)]


def test_released_early_ends_only_that_sources_open_notes():
    r = JamRecord()
    r.note("model", "bass", 36, 0.0, True, 100)
    r.note("model", "strings", 67, 0.5, True, 70)
    r.note("model", "strings", 67, 1.0, False)
    r.note("user", "piano", 60, 0.5, True, 90)
    r.end_open("model", 3.0)
    got = {(n.src, n.pitch): n.off for n in r.roll_snapshot()}
    assert got == {("model", 36): 3.0, ("model", 67): 1.0, ("user", 60): None}


def test_a_snapshot_is_a_copy_and_leaves_out_notes_that_ended_before_the_window():
    r = JamRecord()
    r.add_notes([RollNote("user", "piano", 60, 0.0, 1.0, 80), RollNote("user", "piano", 64, 4.0, None, 80)])
    snap = r.roll_snapshot(since_beat=2.0)
    assert [n.pitch for n in snap] == [64]
    snap[0].off = 99.0
    assert r.roll_snapshot(2.0)[0].off is None


def test_answers_are_kept_in_order_found_by_tag_and_counted_when_played_out():
    r = JamRecord()
    r.add_answer(AnswerRecord(1, 8.0, events=[NoteOn(8.0, "piano", 60, 90), NoteOff(9.0, "piano", 60)]))
    r.add_answer(AnswerRecord(2, 16.0, cancelled=True))
    assert [a.tag for a in r.answers()] == [1, 2] and r.answer(2).cancelled and r.answer(3) is None
    assert r.completed == 1
    assert r.answer(1).end(4) == 16.0 and r.answer(1).start == 8.0  # 2 bars of 4 beats


def test_past_two_hundred_answers_the_oldest_hundred_go():
    r = JamRecord()
    for tag in range(1, 202):
        r.add_answer(AnswerRecord(tag, float(tag)))
    assert [a.tag for a in r.answers()][:2] == [101, 102] and len(r.answers()) == 101 and r.completed == 201


def test_an_answer_record_makes_a_clip_from_beat_0_with_its_settings():
    rec = AnswerRecord(3, 16.0, 1.0, 100.0, [NoteOn(16.0, "piano", 60, 90), NoteOff(17.0, "piano", 60)],
                       {"seed": 11}, "pop", candidates=3, score_by="critic", score=0.7)
    a = clip_from_answer(rec, 4)
    assert (a.label, a.critic, a.seed, a.start, [n.start for n in a.notes]) == ("#3", 0.7, 11, 16.0, [0.0])


def test_a_cancelled_answer_keeps_the_notes_that_sounded_ended_at_the_cut():
    a = LiveAnswer(1, 0.0, 8.0, 0.0, {})
    a.add(NoteOn(0.0, "piano", 60, 90), 1)
    a.add(NoteOn(1.0, "bass", 36, 90), 2)
    a.add(NoteOff(2.0, "piano", 60), 1)
    a.add(NoteOn(5.0, "piano", 64, 90), 3)  # scheduled, never sent
    a.add(NoteOff(6.0, "bass", 36), 2)
    a.sent.update({1, 2})
    assert a.played_part(cut=3.0) == [NoteOn(0.0, "piano", 60, 90), NoteOn(1.0, "bass", 36, 90),
                                      NoteOff(2.0, "piano", 60), NoteOff(3.0, "bass", 36)]
    a.cut(1.5)
    assert a.end == 1.5 and [e.time for e in a.events] == [0.0, 1.0]


def test_figures_are_percentiles_of_what_was_measured():
    r = JamRecord()
    assert r.stats()["latency"]["first_token_ms"] == {"p50": None, "p99": None, "n": 0}
    for ms in (10.0, 20.0, 30.0):
        r.first_token_ms.append(ms)
    r.generated(tokens=100, seconds=0.5, music_s=2.0)
    st = r.stats()
    assert st["latency"]["first_token_ms"]["p50"] == 20.0 and st["latency"]["first_token_ms"]["n"] == 3
    assert st["throughput"] == {"tokens_per_s": {"p50": 200.0, "p99": 200.0, "n": 1},
                                "realtime_x": {"p50": 4.0, "p99": 4.0, "n": 1}}
    assert r.figures_seen() == 4


def test_the_app_reads_input_drops_and_send_jitter_from_the_session_not_its_parts():
    """`health()` is what the status bar and the meter show: the input's drop count and
    the scheduler's jitter, as one typed record (the GUI never reaches into ports)."""
    from musebridge.bridge.config import JamConfig
    from musebridge.bridge.session import Health, JamSession

    s = JamSession(JamConfig(), ports=False)
    assert s.health() == Health(input_dropped=0, send_jitter_p99_ms=None)
    s.ports.dropped.sysex += 2
    assert s.health().input_dropped == 2
