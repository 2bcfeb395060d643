"""The critic on ONNX Runtime (engine/decode/critic_score.py, onnx_export/classifier.py): the same
scores as the PyTorch classifier, no torch needed to rank, and a damaged folder is one line.

Only the parity tests need torch; the rest run on the runtime install (numpy, onnx,
onnxruntime, safetensors), their critics written with numpy alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musebridge.engine.training.checkpoint import DEFAULT_MODEL, check_model_section, load_vocab
from musebridge.engine.decode.critic_score import (CLASSIFIER_FORMAT, ClassifierFileError, _SESSIONS, classifier_shapes,
                                            open_classifier, open_critic, rank_continuations)
from musebridge.engine.music.events import Note, Piece
from musebridge.engine.decode.generate import prompt_tokens
from musebridge.engine.music.midi_file import read_midi
from musebridge.engine.music.vocab import STYLE, Vocabulary
from musebridge.cli.main import main

pytest.importorskip("onnxruntime")
SHIPPED = DEFAULT_MODEL / "critic"
TINY = dict(n_layer=2, n_head=4, d_model=32, window=16, context=128)
EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "phrase.mid"


@pytest.fixture(scope="module", autouse=True)
def _own_cache(cache_dir):
    return cache_dir


def write_critic(folder: Path, vocab: Vocabulary, classes=("real", "generated"), seed: int = 0, half: bool = False) -> Path:
    """A random critic folder (TINY sizes) written with numpy alone: the files save_classifier writes."""
    from safetensors.numpy import save_file

    section = check_model_section({"vocab_size": len(vocab), **TINY}, "test")
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    weights = {k: ((1.0 if k.split(".")[-2].startswith("ln") and k.endswith("weight") else 0.0)
                   + 0.3 * rng.standard_normal(s)).astype(dtype) for k, s in classifier_shapes(section, len(classes)).items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "classifier.safetensors"))
    cfg = {"format": CLASSIFIER_FORMAT, "classes": list(classes), "model": section, "info": {"kind": "critic"}}
    (folder / "classifier.json").write_text(json.dumps(cfg))
    vocab.save(folder / "vocab.json")
    return folder


@pytest.fixture(scope="module")
def critic(tmp_path_factory) -> Path:
    return write_critic(tmp_path_factory.mktemp("critic"), Vocabulary())


def random_windows(vocab: Vocabulary, lengths, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, len(vocab), n) for n in lengths]


def music_windows(vocab: Vocabulary, lengths) -> list[np.ndarray]:
    """Windows of real tokens: the example phrase (a style in its prefix, which the critic must not
    see), its body repeated to each length."""
    piece = read_midi(EXAMPLE)
    head = prompt_tokens(piece, vocab, vocab.styles[-1], piece.families)
    assert vocab.kind[head[1]] == STYLE and head[1] != vocab.style(None)
    body = head[3:]
    tokens = head + body * (max(lengths) // len(body) + 1)
    return [np.array(tokens[:n]) for n in lengths]


# --- parity with PyTorch --------------------------------------------------------------------------
def _torch_logits(model, windows, vocab, length):
    import torch

    from musebridge.engine.training.critic import _inputs

    with torch.inference_mode():
        return model(*_inputs(windows, vocab, length), vocab.pad).numpy()


@pytest.mark.parametrize("half", [False, True])
def test_a_random_classifier_scores_as_in_torch(tmp_path, half):
    """save_classifier's folder (fp32, and fp16 as shipped): ONNX logits and probabilities equal the
    torch classifier's within 1e-4, on windows shorter than, as long as and longer than the context,
    batched (pad after each), in three classes."""
    torch = pytest.importorskip("torch")
    from musebridge.engine.training.critic import SequenceClassifier, load_classifier, predict, save_classifier
    from musebridge.engine.training.model import ModelConfig

    vocab = Vocabulary()
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(vocab_size=len(vocab), **TINY), ["real", "generated", "other"]).eval()
    with torch.no_grad():  # weights of a size where logits are far from 0 and differences show
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        model.out.weight.normal_(0.0, 3.0)  # the pooled states are small: logits of a few nats
    save_classifier(tmp_path, model, vocab, {"kind": "critic"}, half=half)
    ref = load_classifier(tmp_path)[0] if half else model  # fp16 on disk: torch compares with what it loads
    windows = random_windows(vocab, (128, 100, 37, 1, 200))
    onnx = open_classifier(tmp_path)
    logits = onnx.run(windows, output="logits")
    assert np.abs(logits - _torch_logits(ref, windows, vocab, 128)).max() < 1e-4
    assert np.abs(logits).max() > 1.0  # not a trivial match near zero
    probs = onnx.predict(windows)
    assert probs.shape == (5, 3) and np.abs(probs - predict(ref, windows, vocab)).max() < 1e-4
    assert np.abs(onnx.p_real(windows, 50) - predict(ref, [w[-50:] for w in windows], vocab, 50)[:, 0]).max() < 1e-4


def test_the_shipped_critic_scores_as_in_torch():
    """The shipped critic (fp16 on disk) on real tokens of four lengths, one batch, cropped to the
    last 512 as ranking reads them: ONNX P(real) and logits equal torch's within 1e-4."""
    pytest.importorskip("torch")
    from musebridge.engine.training.critic import load_classifier, rank_by_critic

    model, vocab, _ = load_classifier(SHIPPED)
    onnx = open_critic(SHIPPED)
    windows = music_windows(vocab, (512, 333, 64, 700))
    assert np.abs(onnx.p_real(windows) - rank_by_critic(model, vocab, windows)).max() < 1e-4
    cropped = [w[-512:] for w in windows]
    assert np.abs(onnx.run(cropped, output="logits") - _torch_logits(model, cropped, vocab, 512)).max() < 1e-4


def test_ranking_reads_the_prompt_and_each_continuation(critic):
    """rank_continuations scores prompt + continuation, as the critic's P(real) of that window."""
    vocab = Vocabulary()
    prompt = Piece(notes=[Note(0.0, 1.0, 60, 90, "piano"), Note(1.0, 1.0, 64, 90, "piano")])
    conts = [list(w) for w in random_windows(vocab, (40, 90, 7), seed=3)]
    scores = rank_continuations(critic, prompt, conts, vocab, "unknown")
    head = prompt_tokens(prompt, vocab, "unknown", prompt.families)
    assert scores == [float(s) for s in open_critic(critic).p_real([head + c for c in conts])]
    assert len(set(scores)) == 3 and all(0.0 < s < 1.0 for s in scores)
    with pytest.raises(ClassifierFileError, match="another vocabulary"):
        rank_continuations(SHIPPED, prompt, conts, vocab)


# --- no torch -------------------------------------------------------------------------------------
def _without_torch(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python where `import torch` fails, then check torch never came in."""
    prelude = "import sys; sys.modules['torch'] = None\n"
    check = "\nassert sys.modules.get('torch') is None, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", prelude + code + check], capture_output=True, text=True, check=False,
                          timeout=timeout, env=dict(os.environ))


def test_the_onnx_path_scores_with_torch_hidden(critic):
    code = (f"import numpy as np\nfrom musebridge.engine.decode.critic_score import open_critic\n"
            f"c = open_critic({str(critic)!r})\n"
            "p = c.predict([np.arange(1, 60), np.arange(5, 200)])\n"
            "assert p.shape == (2, 2) and np.allclose(p.sum(1), 1) and (p > 0).all(), p\n"
            "print(float(c.p_real([np.arange(1, 60)])[0]))")
    r = _without_torch(code)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(float(open_critic(critic).p_real([np.arange(1, 60)])[0]), abs=1e-6)


def test_generate_ranks_variations_with_torch_hidden(tmp_path):
    """`generate --variations` on the runtime install: the shipped model's folder critic ranks."""
    out = tmp_path / "a.mid"
    code = ("from musebridge.cli.main import main\n"
            f"rc = main(['generate', '--prompt', {str(EXAMPLE)!r}, '--variations', '3', '--bars', '1', '--seed', '2', "
            f"'--out', {str(out)!r}])\nassert rc == 0, rc")
    r = _without_torch(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    scores = [float(line.rsplit("critic ", 1)[1]) for line in lines]
    assert len(lines) == 3 and scores == sorted(scores, reverse=True), r.stdout
    assert all((tmp_path / f"a-{i}.mid").exists() for i in (1, 2, 3))


def test_the_app_ranks_variations_with_torch_hidden():
    """The app's variations job (gui/jobs.py) on the shipped model: every clip scored, best first."""
    pytest.importorskip("PyQt6")
    code = ("import os; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
            "from PyQt6.QtCore import QCoreApplication\napp = QCoreApplication([])\n"
            "from musebridge.engine.music.events import Note, Piece\nfrom musebridge.engine.decode.sampling import SamplingControls\n"
            "from musebridge.gui.jobs import GenerateJob\n"
            "job, got = GenerateJob(None), []\njob.done.connect(lambda clips, err: got.append((clips, err)))\n"
            "prompt = Piece(notes=[Note(0.0, 1.0, 60, 90, 'piano'), Note(1.0, 1.0, 64, 90, 'piano')])\n"
            "job._run(prompt, 3, 1.0, SamplingControls(seed=3), None, 4, 120.0, 'variation', 'V')  # in this thread\n"
            "(clips, err), = got\nassert err == '', err\n"
            "scores = [c.critic for c in clips]\n"
            "assert len(clips) == 3 and None not in scores and scores == sorted(scores, reverse=True), scores")
    r = _without_torch(code)
    assert r.returncode == 0, r.stderr


# --- the graph cache --------------------------------------------------------------------------------
def test_the_graph_is_cached_and_rebuilt_when_the_weights_or_the_file_change(tmp_path, cache_dir):
    def graphs() -> set[Path]:
        return set(cache_dir.glob("onnx/*/classifier-fp32.onnx"))

    vocab = Vocabulary()
    folder = write_critic(tmp_path / "c", vocab, seed=11)  # files no other test writes: a graph of its own
    windows = random_windows(vocab, (30, 60))
    before = graphs()
    first = open_critic(folder).predict(windows)
    (graph,) = graphs() - before
    built = graph.stat().st_mtime_ns
    assert np.array_equal(open_critic(folder).predict(windows), first) and graph.stat().st_mtime_ns == built
    write_critic(folder, vocab, seed=5)  # retrained: a new hash, a new graph, other scores
    assert not np.allclose(open_critic(folder).predict(windows), first) and len(graphs() - before) == 2
    write_critic(folder, vocab, seed=11)  # the same files again: the first graph, damaged on disk, is rebuilt
    graph.write_bytes(b"not a graph")
    _SESSIONS.clear()
    assert np.array_equal(open_critic(folder).predict(windows), first) and graph.stat().st_size > 1000


# --- damage: one line -------------------------------------------------------------------------------
def _json(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "classifier.json").read_text())
    for k, v in changes.items():
        cfg[k] = v
    (folder / "classifier.json").write_text(json.dumps(cfg))


def _tensors(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(folder / "classifier.safetensors"))
    change(weights)
    save_file(weights, str(folder / "classifier.safetensors"))


def _nan(w: dict) -> None:
    w["trunk.blocks.1.mlp.fc.weight"][3, 4] = np.nan


DAMAGE = {
    "json garbage": (lambda f: (f / "classifier.json").write_text("{not json"), "classifier.json is unreadable"),
    "not a classifier": (lambda f: _json(f, format="musebridge-model"), "not a MuseBridge classifier"),
    "one class": (lambda f: _json(f, classes=["real"]), "no two distinct classes"),
    "bad size": (lambda f: _json(f, model={**TINY, "vocab_size": len(Vocabulary()), "n_layer": 0}), "n_layer 0"),
    "no weights": (lambda f: (f / "classifier.safetensors").unlink(), "classifier.safetensors is missing"),
    "cut weights": (lambda f: (f / "classifier.safetensors").write_bytes((f / "classifier.safetensors").read_bytes()[:5000]),
                    "corrupt"),
    "NaN": (lambda f: _tensors(f, _nan), "holds NaN"),
    "missing tensor": (lambda f: _tensors(f, lambda w: w.pop("out.bias")), "lacks tensor out.bias"),
    "wrong shape": (lambda f: _tensors(f, lambda w: w.update({"out.bias": np.zeros(5, np.float32)})), "expected (2,)"),
    "other vocabulary size": (lambda f: shutil.copy(SHIPPED / "vocab.json", f / "vocab.json"), "tokens but vocab.json has"),
    "no vocabulary": (lambda f: (f / "vocab.json").unlink(), "vocab"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_critic_is_one_line(critic, tmp_path, damage, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(critic, bad)
    change, words = DAMAGE[damage]
    change(bad)
    with pytest.raises(ClassifierFileError) as e:
        open_critic(bad)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(bad) in msg and words in msg and "retrain" in msg, msg
    if importlib.util.find_spec("torch"):  # the PyTorch loader reads through the same checks
        from musebridge.engine.training.critic import load_classifier

        with pytest.raises(ClassifierFileError) as te:
            load_classifier(bad)
        assert str(te.value) == msg
    rc = main(["generate", "--variations", "2", "--critic", str(bad), "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err, err


def test_a_style_classifier_is_not_a_critic(tmp_path, capsys):
    vocab = load_vocab(DEFAULT_MODEL)
    style = write_critic(tmp_path / "style", vocab, classes=("bach", "jazz", "pop"))
    assert open_classifier(style).predict(random_windows(vocab, (20,))).shape == (1, 3)
    rc = main(["generate", "--variations", "2", "--critic", str(style), "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a critic" in err and str(style) in err, err
