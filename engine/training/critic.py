"""Clara's critic and a style classifier: small sequence classifiers on the model's trunk.

* The *critic* learns to tell real passages from the model's own generations; its
  P(real) ranks N candidate continuations (MuseNet's inner critic, from Clara).
* The *style classifier* names a passage's style/composer label; over many generated
  samples it gives Clara's inception-style score, exp(E_x KL(p(y|x) || p(y))): high
  when each sample is confidently one style and the samples cover many styles.

Both read windows with the style token hidden (the prefix would give the answer away)
and pool the trunk's hidden states over the window. Saved as safetensors + JSON.

This module is the PyTorch side (training, evaluation). The torch-free side -- the
inputs (`prepare`), reading a classifier folder, scoring on ONNX Runtime and ranking
variations -- is `critic_score.py`; both feed the same `prepare` and hold the same checks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from musebridge.errors import ModelFileError, MuseBridgeError
from musebridge.files import write_atomic

from ..decode.critic_score import (BATCH, CLASSIFIER_FORMAT, TRUNK, unusable_classifier, crop_length, prepare, read_classifier,
                           real_scores)
from .model import ModelConfig, MuseModel
from ..music.vocab import Vocabulary

CLASSIFIER_SIZE = dict(n_layer=2, n_head=4, d_model=128, window=64, context=512)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, classes: list[str]):
        super().__init__()
        self.cfg = cfg
        self.classes = list(classes)
        self.trunk = MuseModel(cfg)
        self.out = nn.Linear(cfg.d_model, len(classes))

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor, pad: int) -> torch.Tensor:
        h = self.trunk.hidden(tokens, feats)
        m = (tokens != pad).unsqueeze(-1).float()
        return self.out((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def _inputs(windows: list[np.ndarray], vocab: Vocabulary, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`critic_score.prepare` as tensors."""
    toks, feats = prepare(windows, vocab, length)
    return torch.from_numpy(toks), torch.from_numpy(feats)


def fit_classifier(windows: list[np.ndarray], labels: list[int], classes: list[str], vocab: Vocabulary,
                   steps: int = 300, batch: int = 16, lr: float = 1e-3, seed: int = 0, length: int = 512) -> SequenceClassifier:
    torch.manual_seed(seed)
    tpb = vocab.config.ticks_per_beat if vocab.config.time_mode == "beats" else 50
    cfg = ModelConfig(vocab_size=len(vocab), ticks_per_beat=tpb, **{**CLASSIFIER_SIZE, "context": max(length, 64)})
    model = SequenceClassifier(cfg, classes)
    toks, feats = _inputs(windows, vocab, length)
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    # balance classes: sample each batch uniformly over classes present
    by_class = [np.nonzero(y.numpy() == c)[0] for c in range(len(classes))]
    by_class = [ix for ix in by_class if len(ix)]
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = np.array([rng.choice(by_class[rng.integers(len(by_class))]) for _ in range(batch)])
        loss = F.cross_entropy(model(toks[idx], feats[idx], vocab.pad), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def predict(model: SequenceClassifier, windows: list[np.ndarray], vocab: Vocabulary, length: int | None = None) -> np.ndarray:
    """Class probabilities [N, C] (windows cropped to the classifier's context)."""
    length = crop_length(length, model.cfg.context)
    toks, feats = _inputs(windows, vocab, length)
    out = [F.softmax(model(toks[i : i + BATCH], feats[i : i + BATCH], vocab.pad), -1) for i in range(0, len(toks), BATCH)]
    return torch.cat(out).numpy()


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): confident per sample, diverse across samples."""
    p = np.clip(probs, 1e-12, 1.0)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def save_classifier(folder: str | Path, model: SequenceClassifier, vocab: Vocabulary, info: dict, half: bool = False) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != TRUNK + "head.weight"}
    if half:  # fp16 on disk (the shipped critic), fp32 in memory
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # through write_atomic, as the model's files (`checkpoint.save_model`): a failed write
    # leaves the critic that was there, and the files are readable like any other
    write_atomic(folder / "classifier.safetensors", lambda tmp: save_file(state, tmp), ModelFileError)
    cfg = {"format": CLASSIFIER_FORMAT, "classes": model.classes, "model": model.cfg.to_dict(), "info": info}
    write_atomic(folder / "classifier.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=1)), ModelFileError)
    write_atomic(folder / "vocab.json", vocab.save, ModelFileError)


def load_classifier(folder: str | Path) -> tuple[SequenceClassifier, Vocabulary, dict]:
    """(classifier, vocab, info) of a folder, checked by `critic_score.read_classifier` (the ONNX
    path's reader: one rule for both) before anything is built; fp16 on disk, fp32 in memory."""
    spec = read_classifier(folder)
    model = SequenceClassifier(ModelConfig(**spec.section), spec.classes)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in spec.weights.items()}
    state[TRUNK + "head.weight"] = state[TRUNK + "tok.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise unusable_classifier(spec.folder, str(e).splitlines()[0][:120]) from None
    return model.eval(), spec.vocab, spec.info


def real_windows(shards, split: str, n: int, length: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    """n windows from the starts of real pieces (as generations start), with their styles."""
    pieces = shards.split_pieces(split)
    w = shards.style_weights(split)
    picks = rng.choice(len(pieces), size=n, p=w)
    return [np.asarray(shards.piece_tokens(pieces[i])[:length]) for i in picks], [pieces[i]["style"] for i in picks]


def generated_windows(runtime, shards, split: str, n: int, length: int, prompt_len: int, rng: np.random.Generator,
                      controls=None, batch: int = 16) -> list[np.ndarray]:
    """n windows that start with `prompt_len` real tokens and go on with the model's own."""
    from ..decode.generate import continue_rows
    from ..decode.sampling import Grammar, LogitShaper, SamplingControls

    controls = controls or SamplingControls(top_p=0.95)
    reals, _ = real_windows(shards, split, n, prompt_len, rng)
    out: list[np.ndarray] = []
    v = shards.vocab
    for prompt in reals:
        logits = runtime.prefill([int(t) for t in prompt])
        g = Grammar(v)
        for t in prompt:
            g.update(int(t))
        seed = int(rng.integers(2**31))
        rows = continue_rows(runtime, logits, LogitShaper(v, controls.with_(seed=seed)), [g], math.inf,
                             length - len(prompt), [seed])
        out.append(np.concatenate([prompt, np.array(rows[0], np.int64)])[:length])
    return out


def separation(critic: SequenceClassifier, vocab: Vocabulary, real: list[np.ndarray], generated: list[np.ndarray],
               length: int) -> dict[str, float]:
    """How well a critic tells `real` windows from `generated` ones: accuracy, and AUC (the
    chance a real window scores above a generated one: what ranking by it relies on)."""
    p = predict(critic, real + generated, vocab, length)
    truth = np.array([0] * len(real) + [1] * len(generated))
    score = p[:, 0]
    return {"accuracy": float((p.argmax(1) == truth).mean()),
            "auc": float(np.mean(score[: len(real), None] > score[None, len(real):]))}


def train_critic(generator: str | Path | None, data: str | Path, out: str | Path, samples: int = 256, steps: int = 300,
                 length: int = 512, prompt_len: int = 64, seed: int = 0) -> dict:
    """Fit the critic on real windows vs the generator's own; report held-out accuracy."""
    from .checkpoint import load_model
    from ..data.dataset import TokenShards
    from ..decode.torch_runtime import TorchRuntime

    shards = TokenShards(data)
    model, vocab, _ = load_model(generator)
    if vocab != shards.vocab:
        raise MuseBridgeError(f"the generator's vocabulary differs from {data}'s; use the data it was trained on")
    rng = np.random.default_rng(seed)
    n_test = max(samples // 4, 8)
    rt = TorchRuntime(model, vocab)
    gen = generated_windows(rt, shards, "train", samples + n_test, length, prompt_len, rng)
    real, _ = real_windows(shards, "train", samples + n_test, length, rng)
    windows = real[:samples] + gen[:samples]
    labels = [0] * samples + [1] * samples
    critic = fit_classifier(windows, labels, ["real", "generated"], vocab, steps=steps, seed=seed, length=length)
    acc = separation(critic, vocab, real[samples:], gen[samples:], length)["accuracy"]
    info = {"kind": "critic", "generator": str(generator), "samples": samples, "steps": steps, "held_out_accuracy": acc}
    save_classifier(out, critic, vocab, info)
    return info


def train_style(data: str | Path, out: str | Path, steps: int = 600, length: int = 512, min_pieces: int = 30,
                per_class: int = 200, seed: int = 0) -> dict:
    """Fit the style classifier on styles with at least `min_pieces` training pieces."""
    from ..data.dataset import TokenShards

    shards = TokenShards(data)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for p in shards.split_pieces("train"):
        counts[p["style"]] = counts.get(p["style"], 0) + 1
    classes = sorted(s for s, c in counts.items() if c >= min_pieces)
    if len(classes) < 2:
        raise MuseBridgeError(f"{data} has fewer than two styles with {min_pieces}+ training pieces; lower --min-pieces")
    windows, labels = [], []
    for ci, style in enumerate(classes):
        pieces = [p for p in shards.split_pieces("train") if p["style"] == style]
        for i in rng.choice(len(pieces), size=per_class):
            toks = np.asarray(shards.piece_tokens(pieces[i]))
            start = int(rng.integers(0, max(len(toks) - length, 0) + 1))
            windows.append(toks[start : start + length])
            labels.append(ci)
    model = fit_classifier(windows, labels, classes, shards.vocab, steps=steps, seed=seed, length=length)
    val = [p for p in shards.split_pieces("val") if p["style"] in classes]
    acc = None
    if val:
        vw = [np.asarray(shards.piece_tokens(p))[:length] for p in val]
        pred = predict(model, vw, shards.vocab, length).argmax(1)
        acc = float(np.mean([classes[k] == p["style"] for k, p in zip(pred, val)]))
    info = {"kind": "style", "classes": classes, "steps": steps, "val_accuracy": acc}
    save_classifier(out, model, shards.vocab, info)
    return info


def rank_by_critic(critic: SequenceClassifier, vocab: Vocabulary, windows: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """P(real) per window (its last `length` tokens): higher is better."""
    return real_scores(lambda w, n: predict(critic, w, vocab, n), critic.classes, critic.cfg.context, windows, length)


def style_scores(classifier_dir: str | Path, model_dir: str | Path | None, data: str | Path, split: str = "val",
                 samples: int = 64, length: int | None = None, prompt_len: int = 64, seed: int = 0) -> dict:
    """Clara's inception-style score of the model's generations, next to real passages'."""
    from .checkpoint import load_model
    from ..data.dataset import TokenShards
    from ..decode.torch_runtime import TorchRuntime

    clf, cvocab, _ = load_classifier(classifier_dir)
    shards = TokenShards(data)
    model, vocab, _ = load_model(model_dir)
    if not (cvocab == vocab == shards.vocab):
        raise MuseBridgeError("the classifier, the model and the data use different vocabularies")
    length = length or clf.cfg.context
    prompt_len = min(prompt_len, length // 2)
    rng = np.random.default_rng(seed)
    real, _ = real_windows(shards, split, samples, length, rng)
    gen = generated_windows(TorchRuntime(model, vocab), shards, split, samples, length, prompt_len, rng)
    return {"generated": inception_score(predict(clf, gen, vocab, length)),
            "real": inception_score(predict(clf, real, vocab, length)), "samples": samples, "classes": len(clf.classes)}
