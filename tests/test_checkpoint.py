"""Values and model files: every bad number and every kind of damage is one `error:` line.

Damaged copies of a tiny model in tmp_path (truncated, NaN, flipped bits, huge values, config
sizes no model has, a damaged vocab.json) go through `musebridge generate` on both backends;
bad option values through generate and jam; and a runtime whose numbers are garbage stops
with an error in both decode loops (offline generation and the jam timeline) instead of
writing hundreds of notes at one instant.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from musebridge.engine.training.checkpoint import (CHECKSUM_KEY, DEFAULT_MODEL, TRANSFORMER_REALS, TRANSFORMER_SIZES,
                                                   weights_checksum)
from musebridge.errors import ModelFileError, ModelOutputError
from musebridge.engine.music.events import Note, Piece, TimeSignature
from musebridge.engine.decode.runtime import CachedRuntime
from musebridge.engine.decode.sampling import ControlError, LogitShaper, SamplingControls
from musebridge.engine.music.vocab import NOTE, PEDAL, WAIT, Vocabulary
from musebridge.cli.main import main

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

BACKENDS = ["onnxruntime", "torch"]


@pytest.fixture(scope="module", autouse=True)
def _own_cache(cache_dir):
    return cache_dir


def _copy(tiny: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    return bad


def _edit_config(folder: Path, section: str = "model", **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg[section].update(changes)
    path.write_text(json.dumps(cfg))


def _unchecksummed(folder: Path) -> None:
    """A model saved before checksums existed: only the always-on checks protect it."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg["info"].pop(CHECKSUM_KEY)
    path.write_text(json.dumps(cfg))


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    w = load_file(str(folder / "model.safetensors"))
    change(w)
    save_file(w, str(folder / "model.safetensors"))


def _generate_fails(folder: Path, tmp_path: Path, capsys, backend: str, names: str, *extra: str) -> str:
    """`musebridge generate` on `folder`: exit 2, one `error:` line naming `names`, no output."""
    out = tmp_path / f"o-{backend}.mid"
    capsys.readouterr()
    rc = main(["generate", "--model", str(folder), "--bars", "1", "--seed", "1", "--backend", backend,
               "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "unexpected" not in err, err
    assert names in err, err
    assert not out.exists()
    return err


# --- damaged weights ------------------------------------------------------------------------

def _truncate(folder: Path) -> None:
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])


def _flip_bits(folder: Path) -> None:
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64 * 97, 97):  # in the payload, not the header
        data[i] ^= 0x40
    w.write_bytes(bytes(data))


def _nan_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda w: w["blocks.1.mlp.fc.weight"].__setitem__((3, 5), np.nan))


def _inf_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda w: w["ln_f.weight"].__setitem__(7, np.inf))


def _huge_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda w: w["tok.weight"].__setitem__((10, 0), 3e5))


def _extra_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda w: w.__setitem__("blocks.2.ln1.weight", np.ones(64, np.float32)))


def _missing_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda w: w.pop("blocks.0.attn.proj.weight"))


DAMAGE = {  # name -> (damage, checksum kept?, words the error must hold)
    "truncated": (_truncate, True, "checksum"),
    "truncated, no checksum": (_truncate, False, "is corrupt"),
    "bit flips": (_flip_bits, True, "checksum"),
    "NaN in one tensor": (_nan_tensor, False, "blocks.1.mlp.fc.weight holds NaN"),
    "infinity": (_inf_tensor, False, "ln_f.weight holds infinity"),
    "huge value": (_huge_tensor, False, "tok.weight holds a value of 3e+05"),
    "unknown extra tensor": (_extra_tensor, False, "has blocks.2.ln1.weight"),
    "missing tensor": (_missing_tensor, False, "lacks blocks.0.attn.proj.weight"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_weights_are_one_line_errors_on_both_backends(tiny, tmp_path, capsys, damage, backend):
    bad = _copy(tiny, tmp_path)
    fn, keep_checksum, words = DAMAGE[damage]
    if not keep_checksum:
        _unchecksummed(bad)
    fn(bad)
    err = _generate_fails(bad, tmp_path, capsys, backend, "model.safetensors")
    assert words in err


def test_nan_weights_never_load_even_with_a_matching_checksum(tiny, tmp_path):
    """Finite checks always run: a NaN saved as such (checksum recomputed) is still refused."""
    from musebridge.engine.training.checkpoint import load_model
    from musebridge.onnx_export.build import read_weights

    bad = _copy(tiny, tmp_path)
    _nan_tensor(bad)
    _edit_config(bad, "info", **{CHECKSUM_KEY: weights_checksum(bad / "model.safetensors")})
    for load in (load_model, read_weights):
        with pytest.raises(ModelFileError, match="holds NaN"):
            load(bad)


# --- damaged config.json / vocab.json ---------------------------------------------------------

CONFIGS = {  # name -> (model-section changes, words the error must hold)
    "context 1e9": ({"context": 1e9}, "context 1000000000.0"),
    "context huge int": ({"context": 10**9}, "context 1000000000 (use a whole number 1..65536)"),
    "context -1": ({"context": -1}, "context -1"),
    "context 0": ({"context": 0}, "context 0"),
    "context not a multiple of window": ({"context": 500}, "not a multiple of window"),
    "n_layer 3 with 2-layer weights": ({"n_layer": 3}, "lacks blocks.2"),
    "n_layer 1 with 2-layer weights": ({"n_layer": 1}, "has blocks.1"),
    "n_head does not split d_model": ({"n_head": 3}, "does not split into 3 heads"),
    "d_model as text": ({"d_model": "64"}, "d_model '64'"),
    "n_layer true": ({"n_layer": True}, "n_layer True"),
    "rope_base NaN": ({"rope_base": float("nan")}, "rope_base nan"),
    "vocab_size off by one": ({"vocab_size": len(Vocabulary()) + 1}, "the files do not belong together"),
    "unknown setting": ({"n_experts": 8}, "unknown setting 'n_experts'"),
    "ticks_per_beat below the vocabulary's": ({"ticks_per_beat": 4}, "ticks_per_beat 4"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_sizes_are_one_line_errors_on_both_backends(tiny, tmp_path, capsys, case, backend):
    bad = _copy(tiny, tmp_path)
    changes, words = CONFIGS[case]
    _edit_config(bad, **changes)
    err = _generate_fails(bad, tmp_path, capsys, backend, "config.json")
    assert words in err


def _vocab_edit(**changes):
    def edit(folder: Path) -> None:
        path = folder / "vocab.json"
        d = json.loads(path.read_text())
        for k, v in changes.items():
            if k in d["config"]:
                d["config"][k] = v
            else:
                d[k] = v
        path.write_text(json.dumps(d))
    return edit


VOCABS = {  # name -> (damage, words the error must hold)
    "tempo_bins huge": (_vocab_edit(tempo_bins=10**12), "tempo_bins 1000000000000"),
    "tempo_bins NaN": (_vocab_edit(tempo_bins=float("nan")), "tempo_bins nan"),
    "ticks_per_beat -1": (_vocab_edit(ticks_per_beat=-1), "ticks_per_beat -1"),
    "velocity_bins as text": (_vocab_edit(velocity_bins="8"), "velocity_bins '8'"),
    "max_wait_beats huge": (_vocab_edit(max_wait_beats=10**9), "max_wait_beats 1000000000"),
    "min_bpm infinite": (_vocab_edit(min_bpm=float("inf")), "tempo range"),
    "duplicate family": (_vocab_edit(families=["piano", "piano"]), "families"),
    "size lies": (_vocab_edit(size=12), "does not match its config"),
    "truncated": (lambda f: (f / "vocab.json").write_text((f / "vocab.json").read_text()[:500]), "unreadable"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(VOCABS))
def test_damaged_vocab_is_a_one_line_error_on_both_backends(tiny, tmp_path, capsys, case, backend):
    bad = _copy(tiny, tmp_path)
    damage, words = VOCABS[case]
    damage(bad)
    err = _generate_fails(bad, tmp_path, capsys, backend, "vocab.json")
    assert words in err


def test_a_context_of_1e9_is_refused_before_anything_is_allocated(tiny, tmp_path):
    """The torch loader used to build the model (rope tables of 1e9 rows) before any check."""
    import tracemalloc

    from musebridge.engine.training.checkpoint import load_model

    bad = _copy(tiny, tmp_path)
    _edit_config(bad, context=2**29, window=2**13)  # a whole number, a multiple of window: only the bound stops it
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="context 536870912"):
        load_model(bad)
    assert tracemalloc.get_traced_memory()[1] < 200e6
    tracemalloc.stop()


def test_transformer_defaults_are_model_configs():
    """checkpoint.py cannot import engine/training/model.py (torch): its table of defaults is held to it here."""
    from dataclasses import fields

    from musebridge.engine.training.model import ModelConfig

    defaults = {f.name: f.default for f in fields(ModelConfig)}
    assert set(defaults) == set(TRANSFORMER_SIZES) | set(TRANSFORMER_REALS)
    for name, (default, lo, hi) in {**TRANSFORMER_SIZES, **TRANSFORMER_REALS}.items():
        if name != "vocab_size":
            assert defaults[name] == default and lo <= default <= hi, name


def test_the_shipped_model_records_the_checksum_of_its_weights():
    cfg = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert cfg["info"][CHECKSUM_KEY] == weights_checksum(DEFAULT_MODEL / "model.safetensors")


def test_save_and_pack_record_the_checksum(tiny, tmp_path):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["info"][CHECKSUM_KEY] == weights_checksum(tiny / "model.safetensors")
    assert main(["pack", "--model", str(tiny), "--out", str(tmp_path / "packed")]) == 0
    packed = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert packed["info"][CHECKSUM_KEY] == weights_checksum(tmp_path / "packed" / "model.safetensors")
    assert packed["info"][CHECKSUM_KEY] != cfg["info"][CHECKSUM_KEY]  # fp16 weights: another file


def test_a_failed_pack_leaves_the_model_that_was_there_and_files_are_readable_by_all(tiny, tmp_path, capsys, monkeypatch):
    """Packing over a model folder (the shipped one) on a full disk must not destroy it, and
    what a pack writes is readable like any file (safetensors alone wrote weights 0600)."""
    import errno

    import safetensors.torch

    out = tmp_path / "packed"
    assert main(["pack", "--model", str(tiny), "--out", str(out)]) == 0
    from musebridge.engine.training.critic import load_classifier, save_classifier

    save_classifier(out / "critic", *load_classifier(DEFAULT_MODEL / "critic"), half=True)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in files} == {
        "model.safetensors": 0o644, "config.json": 0o644, "vocab.json": 0o644, "critic/classifier.safetensors": 0o644,
        "critic/classifier.json": 0o644, "critic/vocab.json": 0o644}
    before = {p: p.read_bytes() for p in files}
    real = safetensors.torch.save_file

    def full_disk(state, path, metadata=None):
        real(state, path, metadata)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert main(["pack", "--model", str(tiny), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors" in err and "disk space" in err
    assert {p: p.read_bytes() for p in sorted(q for q in out.rglob("*") if q.is_file())} == before  # whole, no temp left


# --- values ----------------------------------------------------------------------------------

GENERATE_VALUES = [("--seed", "-1"), ("--seed", str(2**32)), ("--temperature", "nan"), ("--temperature", "0"),
                   ("--temperature", "-1"), ("--temperature", "inf"), ("--top-k", "-1"), ("--top-p", "0"),
                   ("--top-p", "1.5"), ("--top-p", "nan"), ("--density", "nan"), ("--density", "inf"),
                   ("--density", "0"), ("--bars", "nan"), ("--bars", "inf"), ("--bars", "-2"), ("--bars", "0"),
                   ("--variations", "0"), ("--variations", "1000")]


@pytest.mark.parametrize("option,value", GENERATE_VALUES)
def test_generate_refuses_bad_numbers_in_one_line(option, value, tmp_path, capsys):
    rc = main(["generate", option, value, "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {option} ") and len(err.splitlines()) == 1, err
    assert "unexpected" not in err and not (tmp_path / "o.mid").exists()


@pytest.mark.parametrize("option,value", [("--seed", "-1"), ("--seed", str(2**32)), ("--temperature", "nan"),
                                          ("--top-p", "0"), ("--duration", "-5"), ("--duration", "nan"),
                                          ("--duration", "inf"), ("--bars", "nan"), ("--bpm", "inf")])
def test_jam_refuses_bad_numbers_in_one_line(option, value, capsys):
    """Refused before a port opens: `--duration -5` or `nan` used to run forever."""
    rc = main(["jam", option, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "unexpected" not in err and option.lstrip("-") in err


@pytest.mark.parametrize("changes", [dict(seed=-1), dict(seed=2**32), dict(seed=1.5), dict(seed=True),
                                     dict(temperature=math.nan), dict(temperature=0.0), dict(temperature=math.inf),
                                     dict(top_k=-1), dict(top_k=2.5), dict(top_p=math.nan), dict(top_p=0.0),
                                     dict(density=math.nan), dict(density=math.inf), dict(density=-1.0),
                                     dict(strengths={"piano": math.nan}), dict(strengths={"piano": "loud"}),
                                     dict(key=3)])
def test_the_session_path_refuses_the_same_values(changes):
    """What the app and the session set (SamplingControls.with_) follows the CLI's rules."""
    with pytest.raises(ControlError):
        SamplingControls().with_(**changes)


def test_the_range_edges_are_accepted():
    c = SamplingControls(seed=0, temperature=0.001, top_k=0, top_p=1.0, density=63.9)
    assert SamplingControls(seed=2**32 - 1).seed == 2**32 - 1 and c.top_p == 1.0


def test_a_bad_critic_is_reported_before_generating(tiny, tmp_path, capsys, monkeypatch):
    import musebridge.engine.decode.generate as gen

    def never(*a, **k):
        raise AssertionError("generated before checking the critic")

    monkeypatch.setattr(gen, "generate", never)
    not_a_critic = tmp_path / "empty"
    not_a_critic.mkdir()
    for critic, words in ((tmp_path / "nowhere", "not found"), (not_a_critic, "is not a critic"), (tiny, "is not a critic")):
        rc = main(["generate", "--model", str(tiny), "--variations", "2", "--critic", str(critic), "--out",
                   str(tmp_path / "o.mid"), "--backend", "torch"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and words in err and str(critic) in err, err


# --- garbage at run time ------------------------------------------------------------------------

class FakeRuntime(CachedRuntime):
    """A runtime whose logits come from `logits_for(history)`: what damaged weights would give."""

    name = "fake"

    def __init__(self, vocab: Vocabulary, logits_for, context: int = 100_000):
        super().__init__(vocab, context)
        self.logits_for = logits_for
        self.steps = 0
        self.source = "fake-model"

    def _run(self, tokens, feats, start):
        self.steps += 1
        if self.steps > 20_000:  # the guard failed: end the test instead of hanging it
            raise AssertionError("the decode loop never stopped")
        return self.logits_for(self.history[0])[None, :].astype(np.float32)

    def _clear(self):
        pass

    def _fork_cache(self, n):
        raise NotImplementedError


def _prompt() -> Piece:
    return Piece(notes=[Note(i * 0.5, 0.5, 60 + i, 90, "piano") for i in range(4)], time_signatures=[TimeSignature(0, 4, 4)])


def _restrike(vocab: Vocabulary):
    """One key's note-on and note-off, alternately, forever: 448 identical notes at tick 0."""
    on, off = vocab.note(0, 60, 5), vocab.note(0, 60, 0)

    def logits(history):
        x = np.zeros(len(vocab))
        x[on] = x[off] = 50.0
        return x
    return logits


def _no_time(vocab: Vocabulary):
    """Note tokens spread wide, never a wait: the jam answer that never ended. (Pedals cannot
    flood any more: the grammar lets one change up-then-down per instant.)"""
    def logits(history):
        x = np.full(len(vocab), -50.0)
        x[(vocab.kind == NOTE)] = 50.0
        return x
    return logits


def _nan(vocab: Vocabulary):
    def logits(history):
        x = np.zeros(len(vocab))
        if len(history) > 40:
            x[:] = np.nan
        return x
    return logits


@pytest.mark.parametrize("make,words", [(_restrike, "struck 33 times at one instant"), (_no_time, "tokens without time passing"),
                                        (_nan, "produced invalid numbers")])
def test_garbage_output_stops_generate_with_an_error(make, words):
    from musebridge.engine.decode.generate import generate

    vocab = Vocabulary()
    rt = FakeRuntime(vocab, make(vocab))
    with pytest.raises(ModelOutputError, match=words) as e:
        generate(rt, _prompt(), 8, SamplingControls(seed=1, follow_texture=0.0))  # texture alone would rest it
    assert "fake-model" in str(e.value) and "re-copy or retrain the model" in str(e.value)


@pytest.mark.parametrize("make,words", [(_restrike, "struck 33 times at one instant"), (_no_time, "tokens without time passing"),
                                        (_nan, "produced invalid numbers")])
def test_garbage_output_stops_a_jam_answer_with_an_error(make, words):
    from musebridge.bridge.timeline import Timeline

    vocab = Vocabulary()
    rt = FakeRuntime(vocab, make(vocab))
    tl = Timeline(rt, None, ["piano"])
    sent = []
    with pytest.raises(ModelOutputError, match=words):
        tl.generate(0.0, 8.0, LogitShaper(vocab, SamplingControls(seed=1, follow_texture=0.0)), np.random.default_rng(1),
                    emit=sent.append)
    ons = [(e.family, e.pitch) for e in sent if type(e).__name__ == "NoteOn"]
    assert max((ons.count(k) for k in set(ons)), default=0) <= 32  # a few dozen strikes at most, never hundreds


def test_notes_without_time_passing_are_bounded():
    """Distinct notes and pedals forever (no key struck twice): the token bound ends it."""
    from musebridge.engine.decode.sampling import MAX_TOKENS_PER_INSTANT, OutputGuard

    vocab = Vocabulary()
    guard = OutputGuard(vocab, "m")
    ons = [t for t in range(len(vocab)) if vocab.kind[t] == NOTE and vocab.vbin[t] == 1]
    offs = [t - 1 for t in ons]  # each key struck and released once: a cluster swept forever
    with pytest.raises(ModelOutputError, match=f"more than {MAX_TOKENS_PER_INSTANT} tokens"):
        for on, off in zip(ons * 3, offs * 3):  # every key struck 3 times: far below the strike bound
            guard.check(on)
            guard.check(off)
    guard = OutputGuard(vocab, "m")
    for _ in range(3):  # time passes between: nothing to stop
        for on, off in zip(ons, offs):
            guard.check(on)
            guard.check(off)
        guard.check(vocab.wait(1))
    assert vocab.kind[vocab.wait(1)] == WAIT


def test_non_finite_logits_from_a_runtime_are_one_line_errors(tiny, tmp_path, capsys, monkeypatch):
    """Whatever the loader let through, a runtime's NaN ends `generate` with one line, exit 2."""
    from musebridge.engine.decode.ort_runtime import OrtRuntime
    from musebridge.engine.decode.torch_runtime import TorchRuntime

    for backend, cls in (("onnxruntime", OrtRuntime), ("torch", TorchRuntime)):
        real = cls._run
        monkeypatch.setattr(cls, "_run", lambda self, *a, _real=real: _real(self, *a) * np.nan)
        err = _generate_fails(tiny, tmp_path, capsys, backend, str(tiny))
        assert "produced invalid numbers" in err and "re-copy or retrain" in err
        monkeypatch.setattr(cls, "_run", real)


# --- healthy models are untouched ----------------------------------------------------------------

@pytest.mark.parametrize("controls", [SamplingControls(seed=1), SamplingControls(seed=2, strengths={"drums": 1.0}),
                                      SamplingControls(seed=3, temperature=1.3, strengths={"piano": 1.0})])
def test_the_shipped_model_generates_unhindered(controls):
    """Chords, drum hits and a favoured family: real music never meets the guard."""
    from musebridge.engine.decode.backends import open_runtime
    from musebridge.engine.decode.generate import generate
    from musebridge.engine.music.midi_file import read_midi

    rt = open_runtime(None, "onnxruntime")
    prompt = read_midi(Path(__file__).parents[1] / "docs" / "examples" / "phrase.mid")
    outs = generate(rt, prompt, 8, controls, variations=2)
    assert all(len(o.piece.notes) > 8 for o in outs)


def test_the_tiny_model_generates_unhindered_on_both_backends(tiny, tmp_path, capsys):
    for backend in BACKENDS:
        out = tmp_path / f"{backend}.mid"
        assert main(["generate", "--model", str(tiny), "--bars", "4", "--seed", "5", "--backend", backend,
                     "--out", str(out)]) == 0, capsys.readouterr().err
        assert out.exists()
