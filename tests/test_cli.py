"""The `musebridge` command as a user runs it: a real subprocess, one-line errors."""

import subprocess
import sys

import pytest

from conftest import save_tiny_model, write_test_midi


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "musebridge", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "data" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and "musebridge" in r.stdout


def test_data_build_and_stats(tmp_path):
    src = tmp_path / "jazz"
    src.mkdir()
    for i in range(4):
        write_test_midi(src / f"t{i}.mid")
    (src / "bad.mid").write_bytes(b"\x00\x01garbage")
    r = run("data", "build", "--source", str(src), "--out", str(tmp_path / "d"), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "bad.mid" in r.stderr
    assert "pieces" in r.stdout and "tokens per note" in r.stdout
    r = run("data", "stats", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert "jazz" in r.stdout and "train" in r.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    for args in (
        ("data", "build", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")),
        ("data", "stats", str(tmp_path)),
        ("data", "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--ticks-per-beat", "0"),
    ):
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert lines and ("error" in lines[-1].lower()), r.stderr


def test_generate_command_writes_valid_clips(tmp_path):
    import pytest

    pytest.importorskip("torch")
    from musebridge.engine.music.midi_file import read_metadata, read_midi
    from musebridge.engine.music.vocab import VocabConfig, Vocabulary

    vocab = Vocabulary(VocabConfig(styles=("jazz", "pop")))
    save_tiny_model(tmp_path / "m", vocab=vocab, n_layer=1, n_head=2, d_model=32, context=256)
    write_test_midi(tmp_path / "prompt.mid")
    r = run("generate", "--model", str(tmp_path / "m"), "--prompt", str(tmp_path / "prompt.mid"), "--bars", "2",
            "--strength", "piano=1,drums=0", "--seed", "7", "--style", "jazz", "--variations", "2", "--out", str(tmp_path / "o.mid"))
    assert r.returncode == 0, r.stderr
    for i in (1, 2):
        clip = read_midi(tmp_path / f"o-{i}.mid")
        assert "drums" not in clip.families and clip.end <= 2 * 3 + 1e-6  # the prompt ends in 3/4
        meta = read_metadata(tmp_path / f"o-{i}.mid")
        assert meta["seed"] in (7, 8) and meta["style"] == "jazz" and meta["strengths"] == {"piano": 1.0, "drums": 0.0}
    r = run("generate", "--model", str(tmp_path / "m"), "--list-styles")
    assert r.stdout.split() == ["unknown", "jazz", "pop"]
    for args, what in ((("--style", "polka"), "style"), (("--strength", "kazoo=1"), "kazoo"), (("--temperature", "0"), "temperature"),
                       (("--prompt", str(tmp_path / "missing.mid")), "not found")):
        r = run("generate", "--model", str(tmp_path / "m"), "--bars", "1", "--out", str(tmp_path / "x.mid"), *args)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run("generate", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.mid"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_jam_save_writes_each_finished_answer_with_its_settings(tmp_path):
    """`musebridge jam --save DIR`: an answer the session finished lands in DIR as a .mid."""
    import time
    from types import SimpleNamespace

    from musebridge.engine.music.events import NoteOff, NoteOn
    from musebridge.engine.music.midi_file import read_metadata, read_midi
    from musebridge.bridge.jam_record import AnswerRecord, JamRecord
    from musebridge.cli.jam_cmd import _saving

    record = JamRecord()
    record.add_answer(AnswerRecord(3, 16.0, 1, 100.0, style="pop",
                                   controls={"seed": 11, "temperature": 0.9, "top_p": 0.95, "strengths": {"drums": 0.0}},
                                   events=[NoteOn(16.0, "piano", 60, 90), NoteOn(16.5, "bass", 36, 80),
                                           NoteOff(17.0, "piano", 60), NoteOff(18.0, "bass", 36)]))
    seen = []
    session = SimpleNamespace(record=record)
    on_event = _saving(seen.append, tmp_path / "takes", lambda: session, 4, None, quiet=True)
    on_event({"event": "answer_end", "tag": 3})
    deadline = time.monotonic() + 5
    while not list((tmp_path / "takes").glob("*.mid")) and time.monotonic() < deadline:
        time.sleep(0.02)
    files = list((tmp_path / "takes").glob("*.mid"))
    assert seen == [{"event": "answer_end", "tag": 3}] and len(files) == 1 and "seed11" in files[0].name
    piece = read_midi(files[0])
    assert sorted((n.family, n.pitch, n.start, n.duration) for n in piece.notes) == [("bass", 36, 0.5, 1.5),
                                                                                     ("piano", 60, 0.0, 1.0)]
    meta = read_metadata(files[0])
    assert meta["seed"] == 11 and meta["style"] == "pop" and meta["strengths"] == {"drums": 0.0}


def test_jam_candidates_out_of_range_is_one_line_before_any_port_opens():
    from musebridge.bridge.config import JamConfig
    from musebridge.engine.decode.sampling import ControlError

    for bad in ("0", "9"):
        r = run("jam", "--candidates", bad, "--duration", "0.1")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: candidates {bad} is invalid: use a whole number from 1 (no ranking) to 8"
    for bad in (2.5, True):  # saved settings: only a whole number
        with pytest.raises(ControlError, match="candidates"):
            JamConfig(candidates=bad).validate()
    assert JamConfig(candidates=8).validate().candidates == 8
