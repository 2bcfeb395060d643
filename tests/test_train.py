"""Training, resume, baselines and evaluation on a tiny dataset the test builds."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import write_test_midi  # noqa: E402
from musebridge.engine.training.baselines import NGramModel  # noqa: E402
from musebridge.engine.data.batches import WindowSampler  # noqa: E402
from musebridge.engine.training.checkpoint import load_model  # noqa: E402
from musebridge.engine.data.data_build import build  # noqa: E402
from musebridge.engine.data.dataset import TokenShards  # noqa: E402
from musebridge.engine.training.evaluate import evaluate  # noqa: E402
from musebridge.engine.music.features import FeatureTracker, UNKNOWN  # noqa: E402
from musebridge.engine.training.train import TrainConfig, TrainError, train  # noqa: E402
from musebridge.engine.music.vocab import INSTRUMENT, STYLE  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    for style in ("ballad", "march"):
        (root / style).mkdir()
        for i in range(40):  # 80 pieces: 3 land in val (splits hash the piece names)
            write_test_midi(root / style / f"p{i:02d}.mid")
    out = root / "data"
    build([str(root / "ballad"), str(root / "march")], out, workers=1)
    return out


def _cfg(**kw):
    base = dict(model="tiny", seq_len=128, batch_size=2, steps=4, warmup=2, eval_every=2, eval_batches=1, save_every=2)
    return TrainConfig(**{**base, **kw})


def test_windows_carry_stream_features(data):
    shards = TokenShards(data)
    s = WindowSampler(shards, "train", 64)
    toks, feats = s.batch(8, np.random.default_rng(0), augment=False, structure_dropout=1.0)
    assert toks.shape == (8, 65) and feats.shape == (8, 65, 5)
    assert (feats[..., 3:] == UNKNOWN).all()
    # a window's features equal the streaming tracker's over the whole stream
    tr = FeatureTracker(shards.vocab)
    full = tr.rows(np.asarray(shards.tokens("train")))
    assert (s.feats[:, :3] == full[:, :3]).all()
    _, feats = s.batch(8, np.random.default_rng(0), augment=False, structure_dropout=0.0)
    assert (feats[..., 3] < UNKNOWN).all() and (feats[..., 4] < UNKNOWN).all()


def test_windows_cut_mid_piece_start_with_their_pieces_prefix(data):
    shards = TokenShards(data)
    v = shards.vocab
    s = WindowSampler(shards, "train", 64)
    assert (s.prefix_len >= 3).all()  # start, style, at least one instrument
    toks, feats = s.batch(16, np.random.default_rng(1), augment=False, structure_dropout=1.0, prefix_share=1.0)
    stream = np.asarray(shards.tokens("train"))
    for row, f in zip(toks, feats):
        assert row[0] == v.start and v.kind[row[1]] == STYLE and v.kind[row[2]] == INSTRUMENT
        k = 2 + int(np.argmax(v.kind[row[2:]] != INSTRUMENT))  # start, style, instruments
        body = row[k:]
        body = body[body != v.pad]
        # the rest is one contiguous run of the stream (with its own features, not the prefix's)
        at = next(i for i in range(len(stream) - len(body) + 1) if (stream[i:i + len(body)] == body).all())
        assert (f[k:k + len(body), :3] == s.feats[at:at + len(body), :3]).all()
    plain, _ = s.batch(16, np.random.default_rng(1), augment=False, structure_dropout=1.0, prefix_share=0.0)
    assert (plain[:, 0] == v.start).sum() < 16  # without it, most windows start mid-piece


def test_init_fine_tunes_from_a_model_folder(data, tmp_path):
    train(data, tmp_path / "a", _cfg(steps=2))
    src, _, _ = load_model(tmp_path / "a" / "model")
    train(data, tmp_path / "b", _cfg(steps=1, eval_every=1, lr=1e-9, warmup=0, init=str(tmp_path / "a" / "model")))
    tuned, _, _ = load_model(tmp_path / "b" / "model")
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(src.state_dict().values(), tuned.state_dict().values()))
    with pytest.raises(TrainError, match="another shape"):
        train(data, tmp_path / "c", _cfg(steps=1, init=str(tmp_path / "a" / "model"), model="small"))


def test_train_resume_and_load(data, tmp_path):
    run = tmp_path / "run"
    last = train(data, run, _cfg(steps=2))
    assert last["step"] == 2 and np.isfinite(last["best_val_loss"])
    last = train(data, run, _cfg(steps=4))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    starts = [r["step"] for r in log if r["event"] == "start"]
    assert starts == [0, 2] and last["step"] == 4
    model, vocab, info = load_model(run / "model")
    assert info["step"] in (2, 4) and len(vocab) == model.cfg.vocab_size


def test_loss_goes_down(data, tmp_path):
    last = train(data, tmp_path / "r", _cfg(steps=30, eval_every=30, lr=3e-3, augment=False))
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] in ("step", "eval")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert last["best_val_loss"] < 8.0


def test_baselines_and_eval_table(data, tmp_path):
    train(data, tmp_path / "tf", _cfg(steps=2))
    train(data, tmp_path / "lstm", _cfg(steps=2, arch="lstm"))
    shards = TokenShards(data)
    ng = NGramModel(len(shards.vocab)).fit(np.asarray(shards.tokens("train")))
    ng.save(tmp_path / "ngram.npz")
    rows = evaluate(data, {"tf": tmp_path / "tf" / "model", "lstm": tmp_path / "lstm" / "model"}, tmp_path / "ngram.npz",
                    split="val", seq_len=128)
    assert [r.name for r in rows] == ["tf", "lstm", "4-gram"]
    assert len({r.tokens for r in rows}) == 1  # all scored on the same tokens
    tf_params, lstm_params = rows[0].params, rows[1].params
    assert 0.5 < lstm_params / tf_params < 2.0
    # the n-gram has seen these exact pieces (the test corpus repeats one file): near-perfect
    assert rows[2].nats_per_token < rows[0].nats_per_token


@pytest.mark.xdist_group("exclusive")  # CPU-heavy: never beside the timing tests
def test_critic_and_style_classifier(tmp_path):
    from musebridge.engine.training.critic import inception_score, load_classifier, rank_by_critic, train_critic, train_style

    for style, pitch_shift in (("low", 0), ("high", 24)):
        src = tmp_path / style
        src.mkdir()
        for i in range(12):
            write_test_midi(src / f"{i}.mid")
    # make the two folders differ musically: transpose the "high" one
    from musebridge.engine.music.midi_file import read_midi, write_midi
    from musebridge.engine.music.events import Note

    for f in (tmp_path / "high").glob("*.mid"):
        p = read_midi(f)
        p.notes = [Note(n.start, n.duration, n.pitch + (24 if n.family != "drums" else 0), n.velocity, n.family) for n in p.notes]
        write_midi(p, f)
    build([str(tmp_path / "low"), str(tmp_path / "high")], tmp_path / "d", workers=1)
    train(tmp_path / "d", tmp_path / "gen", _cfg(steps=2))
    info = train_critic(tmp_path / "gen" / "model", tmp_path / "d", tmp_path / "critic", samples=8, steps=30, length=128, prompt_len=16)
    assert info["held_out_accuracy"] >= 0.75  # an untrained generator is easy to spot
    critic, vocab, _ = load_classifier(tmp_path / "critic")
    shards = TokenShards(tmp_path / "d")
    real = np.asarray(shards.piece_tokens(shards.split_pieces("train")[0]))[:128]
    noise = np.random.default_rng(0).integers(3, 200, 128)
    s_real, s_noise = rank_by_critic(critic, vocab, [real, noise], length=128)
    assert s_real > s_noise
    info = train_style(tmp_path / "d", tmp_path / "style", steps=60, length=128, min_pieces=5, per_class=20)
    assert info["classes"] == ["high", "low"]
    assert inception_score(np.eye(2)[[0, 1, 0, 1]]) == pytest.approx(2.0)
    assert inception_score(np.full((4, 2), 0.5)) == pytest.approx(1.0)


@pytest.mark.xdist_group("exclusive")  # CPU-heavy: never beside the timing tests
def test_eval_command_with_baselines_and_style_score(data, tmp_path):
    import subprocess
    import sys

    from musebridge.engine.training.critic import train_style

    train(data, tmp_path / "tf", _cfg(steps=2))
    base = tmp_path / "base"
    train(data, base / "lstm", _cfg(steps=2, arch="lstm"))
    NGramModel(len(TokenShards(data).vocab)).fit(np.asarray(TokenShards(data).tokens("train"))).save(base / "ngram.npz")
    train_style(data, tmp_path / "style", steps=5, length=128, min_pieces=1, per_class=4)
    r = subprocess.run([sys.executable, "-m", "musebridge", "eval", "--data", str(data), "--model", str(tmp_path / "tf" / "model"),
                        "--baselines", str(base), "--split", "val", "--seq-len", "128", "--json", str(tmp_path / "e.json"),
                        "--style-classifier", str(tmp_path / "style"), "--samples", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e.json").read_text())
    assert [row["name"] for row in res["nll"]] == ["tf", "lstm", "4-gram"]
    assert res["style_score"]["tf"]["generated"] >= 1.0


@pytest.mark.xdist_group("exclusive")  # CPU-heavy: never beside the timing tests
def test_torchrun_ddp_two_processes(data, tmp_path):
    """The multi-GPU path, exercised on CPU with the gloo backend."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "musebridge", "train", "--data", str(data),
                        "--config", "tiny", "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2",
                        "--seq-len", "64", "--eval-every", "3", "--warmup", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1  # rank 0 alone writes the log
    assert log[-1]["event"] == "end" and log[-1]["step"] == 3
    load_model(tmp_path / "run" / "model")


def test_mixup_steps_go_through_the_ddp_wrapper(data, tmp_path, monkeypatch):
    """Under torchrun the mixed forward pass must run through DistributedDataParallel,
    or its gradients skip DDP's all-reduce and the replicas drift apart. The wrapper here
    stands in for DDP (a one-process group cannot be made without a rendezvous)."""
    import torch.distributed as dist
    import torch.nn.parallel

    calls = []

    class Spy(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            calls.append(kwargs.get("mix") is not None)
            return self.module(*args, **kwargs)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: None)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Spy)
    train(data, tmp_path / "run", _cfg(mixup=0.4))
    assert calls == [True] * 4  # every training step, mixed, through the wrapper


def test_eval_scores_one_collection_of_the_split(data, tmp_path):
    """`eval --source` (the band-context test set) scores only that collection's pieces."""
    from musebridge.engine.training.evaluate import eval_tokens
    from musebridge.errors import DataError

    shards = TokenShards(data)
    sources = sorted({p["source"] for p in shards.pieces})
    assert len(sources) == 2
    one = sources[0]
    mine = [p for p in shards.split_pieces("train") if p["source"] == one]
    toks = eval_tokens(shards, "train", (one,))
    assert len(toks) == sum(p["tokens"] for p in mine) < len(shards.tokens("train"))
    assert toks[: mine[0]["tokens"]].tolist() == shards.piece_tokens(mine[0]).tolist()
    ng = NGramModel(len(shards.vocab)).fit(np.asarray(shards.tokens("train")))
    ng.save(tmp_path / "ngram.npz")
    (row,) = evaluate(data, {}, tmp_path / "ngram.npz", split="train", seq_len=128, sources=(one,))
    assert row.tokens < len(toks)  # each window's first token is not scored
    with pytest.raises(DataError, match="no source 'nope'"):
        eval_tokens(shards, "train", ("nope",))
