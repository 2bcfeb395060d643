"""Hostile MIDI files through `read_midi` and `musebridge generate` (engine/music/fuzz_files.py
makes them; `python -m musebridge.engine.music.fuzz_files` runs the big count in subprocesses).

The contract is what a user sees: a Piece or one MidiFileError line; exit 0 with a
readable file or exit 2 with one `error:` line -- never exit 1 ("unexpected"), never a
traceback, never a temp file left or the file that was there destroyed.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.fuzz_files import END, meta, mutated, smf, vlq
from musebridge.engine.music.midi_file import read_midi, write_midi
from musebridge.errors import MidiFileError

NOTE = vlq(0) + b"\x90\x3c\x40" + vlq(96) + b"\x80\x3c\x40"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_read_midi_gives_a_piece_or_one_line(rng):
    data = mutated(rng)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "case.mid"
        path.write_bytes(data)
        t0 = time.monotonic()
        try:
            piece = read_midi(path)
        except MidiFileError as e:
            assert len(str(e).splitlines()) == 1 and str(path) in str(e)
        else:
            assert all(n.duration >= 0 and n.start >= 0 for n in piece.notes)
            assert piece.end <= 16 * (len(data) + 1)  # every rest cut: time is bounded by the bytes
        assert time.monotonic() - t0 < 10


# --- generate, in-process, with a tiny random model ----------------------------------------

TINY_MODEL = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 256}  # conftest's `tiny`


@pytest.fixture(scope="module", autouse=True)
def _own_cache(cache_dir):
    """Graphs built for `tiny` go to a temporary cache (conftest's `cache_dir`)."""
    return cache_dir


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    """A valid clip, for an --out that exists before a hostile prompt."""
    good = tmp_path_factory.mktemp("good") / "good.mid"
    write_midi(Piece(notes=[Note(i * 0.5, 0.5, 60 + i, 90, "piano") for i in range(8)]), good)
    return good.read_bytes()


def run_generate(model: Path, prompt: Path, out: Path, *extra: str) -> tuple[int, str]:
    """`musebridge generate` as the console entry point runs it: (exit code, stderr)."""
    from musebridge.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["generate", "--model", str(model), "--prompt", str(prompt), "--bars", "1", "--seed", "1",
                   "--out", str(out), *extra])
    return rc, err.getvalue()


def check_outcome(rc: int, stderr: str, out: Path, good: bytes | None) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    assert sorted(p.name for p in out.parent.iterdir()) == (["clip.mid"] if rc == 0 or good else []), "a temp file left"
    if rc == 0:
        read_midi(out)  # a whole, readable file
    else:
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, stderr)
        assert good is None or out.read_bytes() == good, "the existing file was destroyed"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False), st.booleans())
def test_generate_exits_0_with_a_file_or_2_with_one_line(tiny, good_bytes, rng, existing):
    model = tiny
    with tempfile.TemporaryDirectory() as d:
        prompt, out = Path(d) / "prompt.mid", Path(d) / "out" / "clip.mid"
        prompt.write_bytes(mutated(rng))
        out.parent.mkdir()
        if existing:
            out.write_bytes(good_bytes)
        t0 = time.monotonic()
        rc, err = run_generate(model, prompt, out)
        check_outcome(rc, err, out, good_bytes if existing else None)
        assert time.monotonic() - t0 < 60


def _unblock(fifo: Path, after: float = 15.0) -> None:
    """If a reader sits blocked in open() on `fifo` after `after` s, open and close the
    other end: it reads an empty file and the test fails instead of hanging."""
    time.sleep(after)
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO when no reader: nothing blocked


@pytest.mark.parametrize("kind", ["fifo", "folder", "socket", "device"])
def test_generate_with_a_special_prompt_is_one_line(tiny, tmp_path, kind):
    model = tiny
    prompt = tmp_path / f"{kind}.mid"
    if kind == "fifo":
        os.mkfifo(prompt)
        threading.Thread(target=_unblock, args=(prompt,), daemon=True).start()
    elif kind == "folder":
        prompt.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(prompt))
    else:
        prompt = Path("/dev/zero")
    (tmp_path / "out").mkdir()
    rc, err = run_generate(model, prompt, tmp_path / "out" / "clip.mid")
    check_outcome(rc, err, tmp_path / "out" / "clip.mid", None)
    assert rc == 2 and str(prompt) in err


@pytest.mark.parametrize("ts", [b"\x00\x02\x18\x08", b"\x04\x07\x18\x08"], ids=["0/4", "4/128"])
def test_an_invalid_time_signature_no_longer_empties_the_clip(tiny, tmp_path, ts):
    """0/4 or 4/128 in the prompt made bars of no length: "0 notes over 0.0 beats", exit 0."""
    model = tiny
    prompt = tmp_path / "p.mid"
    prompt.write_bytes(smf([meta(0x58, ts) + NOTE * 4 + END]))
    (tmp_path / "out").mkdir()
    rc, err = run_generate(model, prompt, tmp_path / "out" / "clip.mid", "--bars", "2")
    assert rc == 0, err
    clip = read_midi(tmp_path / "out" / "clip.mid")
    assert clip.notes and 4 < clip.end <= 8 + 1e-6  # two bars of 4/4


def test_generate_with_huge_deltas_ends(tiny, tmp_path):
    """The 81-byte FF FF FF 7F file once made `generate` grow ~16 MB/s without end."""
    model = tiny
    big = b"\xff\xff\xff\x7f"
    prompt = tmp_path / "p.mid"
    prompt.write_bytes(smf([(big + b"\x90\x3c\x40" + big + b"\x80\x3c\x40") * 4 + END], fmt=0, division=1))
    (tmp_path / "out").mkdir()
    t0 = time.monotonic()
    rc, err = run_generate(model, prompt, tmp_path / "out" / "clip.mid", "--with-prompt")
    assert rc == 0, err
    assert time.monotonic() - t0 < 60 and read_midi(tmp_path / "out" / "clip.mid").end < 200


def test_the_generator_is_deterministic_per_seed():
    """The runner's cases are reproducible from its --seed (a failure can be replayed)."""
    assert mutated(random.Random(5)) == mutated(random.Random(5))
    assert len({mutated(random.Random(i)) for i in range(50)}) > 45
