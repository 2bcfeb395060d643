"""Shared helpers: tiny MIDI files written by the tests, the round-trip check, and waiting
for a condition (`wait_until`)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import mido
import pytest

from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.vocab import Vocabulary

from jack_fixtures import jack_server  # noqa: F401  (a fixture: real MIDI ports on a private JACK server)

# ONNX graphs built on first use go to a cache folder: never the user's during tests
os.environ.setdefault("MUSEBRIDGE_CACHE_DIR", tempfile.mkdtemp(prefix="musebridge-test-cache-"))
os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="musebridge-test-config-"))  # MIDI-learn maps

try:  # test models are tiny: one thread each avoids OpenMP threads fighting across xdist workers
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass


def wait_until(cond, timeout: float) -> bool:
    """Poll `cond` every 5 ms until it holds (True) or `timeout` seconds pass (its last answer)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def one_line(excinfo) -> str:
    """The message of a raised error (pytest's `excinfo`), checked to be one line with no traceback."""
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def save_tiny_model(folder: Path, *, lean_to_notes: bool = False, half: bool = False, n_layer: int = 2,
                    n_head: int = 4, d_model: int = 64, context: int = 512, vocab: Vocabulary | None = None) -> Path:
    """A random MuseModel (window 16, seed 0) saved by `save_model` as a model folder, checksum
    included: the one way the tests make a model folder.

    `lean_to_notes`: token embeddings scaled up and note-ons favoured, so logits are of a
    size where parity bounds mean something and sampling plays notes; `half`: fp16 weights
    on disk, as models ship; `vocab`: the default vocabulary unless given."""
    import torch

    from musebridge.engine.training.checkpoint import save_model
    from musebridge.engine.training.model import ModelConfig, MuseModel

    vocab = vocab or Vocabulary()
    torch.manual_seed(0)
    model = MuseModel(ModelConfig(vocab_size=len(vocab), n_layer=n_layer, n_head=n_head, d_model=d_model, window=16,
                                  context=context))
    if lean_to_notes:
        with torch.no_grad():
            model.tok.weight.mul_(5.0)
            model.tok.weight[vocab.note_token_mask(offs=False)] += 0.5
    save_model(folder, model, vocab, half=half)
    return folder


def note_leaning_model(vocab: Vocabulary, context: int = 256):
    """A one-layer random MuseModel leaning towards note-ons, so sampling tests see plenty of
    notes (in memory, for TorchRuntime)."""
    import torch

    from musebridge.engine.training.model import ModelConfig, MuseModel

    torch.manual_seed(0)
    model = MuseModel(ModelConfig(vocab_size=len(vocab), n_layer=1, n_head=2, d_model=32, window=16, context=context))
    with torch.no_grad():
        model.tok.weight[vocab.note_token_mask(offs=False)] += 0.05
    return model


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory) -> Path:
    """A random model folder (`save_tiny_model`: 2 layers, window 16, context 512), one per test
    module; a module asks for another kind with `TINY_MODEL = {...}` (save_tiny_model's
    keywords), e.g. `{"lean_to_notes": True, "half": True}`."""
    pytest.importorskip("torch")
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), **getattr(request.module, "TINY_MODEL", {}))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Graphs and engines a module builds go to a cache of its own, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("MUSEBRIDGE_CACHE_DIR", str(path))
        yield path


def write_test_midi(path: Path, tpb: int = 96) -> list[tuple[int, int, int, float, float, int]]:
    """A small multi-track file: piano chords, a bass line, strings with sustain pedal,
    drums on channel 10, a tempo change and a 3/4 bar. Returns the notes it holds as
    (channel, program, pitch, start_beats, end_beats, velocity) -- the ground truth."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)
    meta = mido.MidiTrack()
    meta += [
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0),
        mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0),
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=tpb * 8),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(132), time=0),
    ]
    mid.tracks.append(meta)
    truth = []
    parts = {
        0: (0, [(60, 0, 1), (64, 0, 1), (67, 0, 1), (62, 1, 2.5), (65, 1, 2.5), (69, 1.5, 2), (72, 3, 4 + 1 / 3)]),
        1: (33, [(36, 0, 0.5), (38, 0.5, 1), (40, 1, 1.75), (43, 2 + 1 / 3, 2 + 2 / 3), (31, 9, 10)]),
        2: (48, [(55, 0, 4), (59, 4, 8), (62, 8.25, 8.5)]),
        9: (0, [(36, 0, 0.25), (42, 0.5, 0.75), (38, 1, 1.25), (42, 1.5, 1.75), (36, 2, 2.25), (49, 8, 8.5)]),
    }
    for ch, (program, notes) in parts.items():
        evs = []
        if ch != 9:
            evs.append((0, 0, mido.Message("program_change", channel=ch, program=program)))
        for i, (pitch, s, e) in enumerate(notes):
            vel = 30 + (17 * i + 11 * ch) % 97
            truth.append((ch, program, pitch, s, e, vel))
            evs.append((round(s * tpb), 2, mido.Message("note_on", channel=ch, note=pitch, velocity=vel)))
            # alternate both spellings of a note-off
            off = (mido.Message("note_off", channel=ch, note=pitch, velocity=64) if i % 2
                   else mido.Message("note_on", channel=ch, note=pitch, velocity=0))
            evs.append((round(e * tpb), 1, off))
        if ch == 2:
            evs.append((round(0.5 * tpb), 1, mido.Message("control_change", channel=ch, control=64, value=127)))
            evs.append((round(3.5 * tpb), 1, mido.Message("control_change", channel=ch, control=64, value=0)))
        track = mido.MidiTrack()
        now = 0
        for tick, _, msg in sorted(evs, key=lambda x: (x[0], x[1])):
            track.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(path)
    return truth


def assert_round_trip(original: Piece, decoded: Piece, vocab: Vocabulary) -> None:
    """Every note of `original` (folded into range) is in `decoded` with the same family
    and pitch, onset and duration within one tick, velocity in the same bin.

    Notes that overlap another note of the same family and pitch are checked by onset
    only: one family holds one key once (a re-strike releases the key; unison strikes
    merge), exactly as a MIDI channel does.
    """
    from musebridge.engine.music.families import FAMILY_BY_NAME, fold_into_range

    cfg = vocab.config
    if cfg.time_mode == "beats":
        tol = 1.0 / cfg.ticks_per_beat + 1e-9
    else:
        tol = cfg.wait_ms / 1000.0 + 1e-9
        tm_o, tm_d = original.tempo_map(), decoded.tempo_map()
    expected = []
    for n in original.notes:
        p = fold_into_range(n.pitch, FAMILY_BY_NAME[n.family])
        if p is not None:
            expected.append(Note(n.start, n.duration, p, n.velocity, n.family))

    def times(n: Note, tm) -> tuple[float, float]:
        if cfg.time_mode == "beats":
            return n.start, n.duration
        s = tm.to_seconds(n.start)
        return s, tm.to_seconds(n.end) - s

    by_key: dict[tuple[str, int], list[Note]] = {}
    for n in decoded.notes:
        by_key.setdefault((n.family, n.pitch), []).append(n)
    exp_by_key: dict[tuple[str, int], list[Note]] = {}
    for n in expected:
        exp_by_key.setdefault((n.family, n.pitch), []).append(n)
    for key, notes in exp_by_key.items():
        got = by_key.get(key, [])
        assert got, f"no decoded notes for {key}"
        notes = sorted(notes, key=lambda n: n.start)
        for i, n in enumerate(notes):
            s, d = times(n, tm_o if cfg.time_mode == "seconds" else None)
            conflict = any(m is not n and m.start < n.end and n.start < m.end for m in notes)
            cands = [g for g in got if abs(times(g, tm_d if cfg.time_mode == "seconds" else None)[0] - s) <= tol]
            assert cands, f"{key}: note at {s} missing (decoded onsets {[g.start for g in got][:10]})"
            if conflict:
                continue
            g = min(cands, key=lambda g: abs(times(g, tm_d if cfg.time_mode == "seconds" else None)[0] - s))
            gs, gd = times(g, tm_d if cfg.time_mode == "seconds" else None)
            assert abs(gd - d) <= tol + 1e-9 or (d < tol and gd <= tol + 1e-9), f"{key} at {s}: duration {gd} vs {d}"
            assert vocab.velocity_bin(g.velocity) == vocab.velocity_bin(n.velocity), f"{key} at {s}: velocity {g.velocity} vs {n.velocity}"
    assert {k for k in by_key} == set(exp_by_key), "decoded notes of keys that were never played"


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary()
