"""The strength probe's counting: a part joins, and how well it fits the prompt."""

from types import SimpleNamespace

from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.music_metrics import estimate_key
from musebridge.engine.training import strength_probe


def test_builtin_phrase_is_a_c_major_piano_phrase():
    p = strength_probe.c_major_phrase()
    assert p.families == ["piano"]
    key = estimate_key(p.notes)
    assert key is not None and key.tonic == 0 and not key.minor


def test_probe_counts_parts_that_join_and_their_fit(monkeypatch):
    answers = {
        0: [Note(0, 1, 36, 90, "bass"), Note(1, 1, 43, 90, "bass"), Note(2, 1, 41, 90, "bass"), Note(3, 1, 38, 90, "bass")],
        1: [Note(0, 1, 37, 90, "bass"), Note(1, 1, 42, 90, "bass"), Note(2, 1, 36, 90, "bass"), Note(3, 1, 43, 90, "bass")],
        2: [Note(0, 1, 36, 90, "bass")],  # one stray note is no bass part
        3: [],
    }

    def fake_generate(runtime, prompt, bars, controls, style, prompt_end):
        assert controls.strengths == {"bass": 1.0}
        return [SimpleNamespace(piece=Piece(notes=answers[controls.seed] + [Note(0, 1, 60, 80, "piano")]))]

    monkeypatch.setattr(strength_probe, "generate", fake_generate)
    res = strength_probe.probe_prompt(None, strength_probe.c_major_phrase(), "bass")
    assert res["seeds_joined"] == 2 and [r["joined"] for r in res["per_seed"]] == [True, True, False, False]
    assert res["in_key"] == round((1.0 + 0.5) / 2, 3)  # C# and F# are out of C major
