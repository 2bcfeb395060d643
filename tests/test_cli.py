"""The `musebridge` command as a user runs it: a real subprocess, one-line errors."""

import subprocess
import sys

from conftest import write_test_midi


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
