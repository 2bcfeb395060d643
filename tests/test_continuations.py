"""The continuation benchmark's plumbing: cases cut at bar lines, systems side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musebridge.engine.training.baselines import NGramModel, NGramRuntime
from musebridge.engine.decode.continuation_bench import cases_from_folder, repeat_last_bar, roll_sheet, run, table
from musebridge.engine.music.events import Note, Piece, Tempo, TimeSignature
from musebridge.engine.decode.generate import prompt_tokens
from musebridge.engine.music.midi_file import write_midi
from musebridge.engine.music.tokenizer import StreamDecoder, encode_piece
from musebridge.engine.music.vocab import Vocabulary

SCALE = [0, 2, 4, 5, 7, 9, 11]


def song(tonic: int, bars: int = 10) -> Piece:
    """A diatonic melody in 8ths over whole-bar I-IV-V-I triads, 4/4 at 100 BPM."""
    notes = []
    for b in range(bars):
        root = tonic + (0, 5, 7, 0)[b % 4]
        notes += [Note(b * 4.0, 4.0, 48 + (root + s) % 12, 70, "piano") for s in (0, 4, 7)]
        notes += [Note(b * 4.0 + k * 0.5, 0.5, 72 + tonic + SCALE[(b + k) % 7], 90, "synth_lead") for k in range(8)]
    return Piece(notes=notes, tempos=[Tempo(0.0, 100.0)], time_signatures=[TimeSignature(0.0, 4, 4)]).sorted()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("songs") / "pop"
    d.mkdir()
    for tonic in (0, 2, 7):
        write_midi(song(tonic), d / f"song{tonic}.mid")
    (d / "broken.mid").write_bytes(b"MThd garbage")  # unreadable files are skipped, not fatal
    return d


def test_cases_cut_the_prompt_and_the_real_continuation_at_bar_lines(folder):
    cases = cases_from_folder(folder, prompt_bars=4, answer_bars=4)
    assert [c.name for c in cases] == ["song0", "song2", "song7"]
    c = cases[0]
    assert c.bar == 4.0 and c.style == "pop"
    assert max(n.end for n in c.prompt.notes) <= 16.0 + 1e-9
    assert min(n.start for n in c.real) == 0.0 and max(n.end for n in c.real) <= 16.0 + 1e-9
    assert len(c.real) == 4 * (3 + 8)
    assert (c.key.tonic, c.key.minor) == (0, False) and c.grid.name == "16ths"
    assert len(repeat_last_bar(c, 4)) == 4 * 11


def test_prompt_ends_at_the_bar_line_so_the_answer_starts_there():
    v = Vocabulary()
    phrase = Piece(notes=[Note(0.0, 1.0, 60, 90, "piano"), Note(1.0, 2.0, 64, 90, "piano")])  # stops at beat 3
    dec = StreamDecoder(v)
    dec.feed_many(prompt_tokens(phrase, v, None, ["piano"], until=4.0))
    assert dec.time == pytest.approx(4.0)
    dec = StreamDecoder(v)
    dec.feed_many(prompt_tokens(phrase, v, None, ["piano"]))
    assert dec.time == pytest.approx(3.0)


def test_ngram_next_distribution_is_its_sequence_probability():
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 40, 4000)
    m = NGramModel(40).fit(toks)
    seq = toks[:300]
    lp = m.log_probs(seq, start=1)
    for pos in (1, 2, 3, 150, 299):
        nxt = m.next_log_probs(list(seq[:pos]))
        assert nxt[seq[pos]] == pytest.approx(lp[pos - 1])
        assert np.exp(nxt).sum() == pytest.approx(1.0)


def test_systems_side_by_side_with_the_real_continuation(folder, tmp_path):
    v = Vocabulary()
    cases = cases_from_folder(folder)
    train = np.concatenate([encode_piece(song(t, 16), v) for t in range(12)])
    ngram = NGramRuntime(NGramModel(len(v)).fit(train), v)
    result = run(cases, {"ngram": ngram}, answer_bars=2, seeds=(0,))
    systems = {r["system"] for r in result["cases"]}
    assert systems == {"ngram", "real", "repeat"}
    real = result["medians"]["real"]["all"]
    assert real["prompts"] == 3 and real["density_vs_real"] == 1.0 and real["polyphony_vs_real"] == 1.0
    assert real["in_scale"] == 1.0 and real["on_grid"] == 1.0 and real["drones"] == 0.0
    assert result["medians"]["repeat"]["all"]["key_agreement"] > 0.5
    ng = [r for r in result["cases"] if r["system"] == "ngram"]
    assert all(r["notes"] > 0 for r in ng)  # it learned these songs: it plays
    assert "key_agreement" in table(result) and "pop" in result["medians"]["ngram"]
    png = roll_sheet(cases, tmp_path / "rolls.png", ("ngram", "repeat", "real"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_prints_the_table_and_writes_json_and_rolls(folder, tmp_path, capsys):
    from musebridge.cli.main import main

    out, png, md = tmp_path / "c.json", tmp_path / "rolls.png", tmp_path / "card.md"
    assert main(["continuations", "--midi", str(folder), "--bars", "2", "--limit", "2", "--seeds", "3",
                 "--backend", "onnxruntime", "--json", str(out), "--png", str(png), "--markdown", str(md),
                 "--follow-key", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "key_agreement" in printed and "model" in printed and "real" in printed
    result = json.loads(out.read_text())
    assert result["medians"]["model"]["all"]["prompts"] == 2 and result["settings"]["seeds"] == [3]
    assert result["settings"]["follow_key"] == 0.5
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| all (2) | model |" in md.read_text() and "| pop (2) | real |" in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "card.md", "rolls.png"]  # no temp files left


def test_command_says_what_is_missing(tmp_path, capsys):
    from musebridge.cli.main import main

    assert main(["continuations", "--midi", str(tmp_path / "nope")]) == 2
    assert "MIDI folder" in capsys.readouterr().err
    assert main(["continuations", "--midi", str(tmp_path), "--seeds", "a,b"]) == 2


def test_command_measures_int8_graphs_on_asking(folder, tiny, tmp_path, capsys):
    """--dtype int8 runs the answers on the int8 graphs (what making them the CPU default is
    judged by) and says so in the settings; with the torch backend it is a usage error."""
    from musebridge.cli.main import main

    out = tmp_path / "c.json"
    assert main(["continuations", "--midi", str(folder), "--bars", "1", "--limit", "1", "--model", str(tiny),
                 "--backend", "onnxruntime", "--dtype", "int8", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["dtype"] == "int8"
    capsys.readouterr()
    assert main(["continuations", "--midi", str(folder), "--model", str(tiny), "--backend", "torch",
                 "--dtype", "int8"]) == 2
    assert "--dtype" in capsys.readouterr().err


def test_cases_from_a_built_data_split(folder, tmp_path):
    from musebridge.engine.decode.continuation_bench import cases_from_split
    from musebridge.engine.data.data_build import build
    from musebridge.engine.data.dataset import TokenShards

    build([str(folder)], tmp_path / "data", workers=1)
    pieces = TokenShards(tmp_path / "data").manifest["pieces"]
    split = pieces[0]["split"]
    cases = cases_from_split(tmp_path / "data", split)
    assert len(cases) == sum(p["split"] == split for p in pieces) > 0
    assert all(c.style == "pop" and c.name.endswith(".mid") and len(c.real) == 4 * 11 for c in cases)
    assert all((c.key.tonic, c.key.minor) in {(0, False), (2, False), (7, False)} for c in cases)


def test_an_answer_the_output_guard_stops_is_counted_and_the_run_goes_on(folder):
    from musebridge.errors import ModelOutputError

    v = Vocabulary()
    train = np.concatenate([encode_piece(song(t, 16), v) for t in range(12)])
    good = NGramRuntime(NGramModel(len(v)).fit(train), v)

    class Flooding(NGramRuntime):
        def step(self, tokens):  # a damaged model: the guard's error on the first step
            raise ModelOutputError("model (in memory) produced output that is not music (test)")

    bad = Flooding(good.model, v)
    result = run(cases_from_folder(folder), {"ngram": good, "broken": bad}, answer_bars=2, seeds=(0,))
    assert result["medians"]["broken"]["all"]["errors"] == 3 and result["medians"]["ngram"]["all"]["errors"] == 0
    assert result["groups"]["ngram"]["all"]["prompts"] == 3
    assert "errors" in table(result)


def test_roll_sheet_draws_each_systems_first_seed_when_several_ran(folder, tmp_path):
    """With --seeds 0,1 the answers are `model@0`, `model@1`: the sheet must still have
    the model's column (it once showed prompt, repeat and real alone)."""
    from musebridge.engine.decode.continuation_bench import _first_answer

    v = Vocabulary()
    cases = cases_from_folder(folder)
    train = np.concatenate([encode_piece(song(t, 16), v) for t in range(12)])
    run(cases, {"ngram": NGramRuntime(NGramModel(len(v)).fit(train), v)}, answer_bars=2, seeds=(0, 1))
    assert all(_first_answer(c, "ngram") is c.answers["ngram@0"] for c in cases)
    roll_sheet(cases, tmp_path / "rolls.png", ("ngram", "real"))
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "rolls.png").shape[1] > 3 * 3.2 * 110 * 0.9  # three columns wide
