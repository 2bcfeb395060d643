"""The critic and the style classifier without torch: their inputs, their folders, ONNX Runtime.

A classifier folder (`critic.save_classifier`: classifier.safetensors + classifier.json +
vocab.json) is read and checked here with numpy (`read_classifier`), and scored on ONNX
Runtime by a graph built from its weights (onnx_export/classifier.py, cached like the
decoder's graphs): `OrtClassifier`. `prepare` makes the inputs of both paths, so the
PyTorch classifier (engine/training/critic.py: training and evaluation) and this one read the same
numbers. Ranking variations (`rank_continuations`: `generate --variations`, the app) runs
here, so the runtime install, which has no torch, ranks too.

Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np

from musebridge.errors import ModelFileError, MuseBridgeError
from musebridge.onnx_export.build import rebuilt_on_damage
from musebridge.onnx_export.classifier import classifier_graph_path
from musebridge.onnx_export.graph import GraphConfig

from ..music.features import UNKNOWN, features
from ..music.vocab import STYLE, Vocabulary
from ..training.checkpoint import check_model_section, damaged_tensor, expected_shapes
from .generate import prompt_tokens
from .ort_runtime import ort_session

CLASSIFIER_FORMAT = "musebridge-classifier"
TRUNK = "trunk."  # the trunk's tensors in classifier.safetensors (`SequenceClassifier.trunk`); `out.*` is the Linear
REAL = "real"  # the critic's class whose probability ranks
BATCH = 32  # windows per forward pass


class ClassifierFileError(MuseBridgeError):
    """A classifier folder (critic or style classifier) that cannot be used."""


def prepare(windows: Sequence[np.ndarray], vocab: Vocabulary, length: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens [N,length] and feats [N,length,5] (int64) of token windows, each cropped to `length`
    and padded after its end. Style tokens are hidden (the prefix would give the answer away) and
    the structural features unknown: a classifier judges the notes, not the label or the length."""
    toks = np.full((len(windows), length), vocab.pad, np.int64)
    feats = np.zeros((len(windows), length, 5), np.int64)
    for r, w in enumerate(windows):
        w = np.asarray(w[:length], np.int64).copy()
        w[vocab.kind[w] == STYLE] = vocab.style(None)
        toks[r, : len(w)] = w
        feats[r, : len(w)] = features(w, vocab)
    feats[..., 3:] = UNKNOWN
    return toks, feats


def crop_length(length: int | None, context: int) -> int:
    """The window length a classifier reads: `length`, at most its context (default: all of it)."""
    return min(length or context, context)


def real_scores(predict: Callable[[list[np.ndarray], int], np.ndarray], classes: list[str], context: int,
                windows: Sequence, length: int | None = None) -> np.ndarray:
    """P(real) per window, read on its last `length` tokens: higher is better. `predict(windows,
    length)` gives class probabilities [N,C]: the PyTorch classifier's or the ONNX one's."""
    length = crop_length(length, context)
    return predict([np.asarray(w)[-length:] for w in windows], length)[:, classes.index(REAL)]


# --- classifier folders ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierFolder:
    """A checked classifier folder."""

    folder: Path
    section: dict  # the trunk's sizes: a model section as checkpoint.check_model_section fills it
    classes: list[str]
    vocab: Vocabulary
    info: dict
    weights: dict[str, np.ndarray]  # as stored (fp16 or fp32); trunk.head.weight is tied to trunk.tok.weight, not stored

    @property
    def context(self) -> int:
        return self.section["context"]


def unusable_classifier(folder: Path, why: str) -> ClassifierFileError:
    """The one line for a damaged classifier folder (both loaders raise it)."""
    return ClassifierFileError(f"classifier folder {folder} is unusable ({why}); re-copy or retrain it")


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def classifier_shapes(section: dict, n_classes: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a classifier of these trunk sizes stores (`checkpoint.expected_shapes` under
    `trunk.`, then the Linear)."""
    shapes = {TRUNK + k: s for k, s in expected_shapes(section).items()}
    return {**shapes, "out.weight": (n_classes, section["d_model"]), "out.bias": (n_classes,)}


def read_classifier(folder: str | Path) -> ClassifierFolder:
    """A classifier folder, checked before anything is built from it: the config (format, classes,
    every trunk size by the model loaders' rule), the vocabulary (its size), every tensor (names,
    shapes, finite sane values). Any damage is one line naming the folder."""
    folder = Path(folder)
    try:
        return _read(folder)
    except ClassifierFileError:
        raise
    except Exception as e:  # damage nobody foresaw is still one line
        raise unusable_classifier(folder, _first_line(e)) from None


def _read(folder: Path) -> ClassifierFolder:
    from safetensors.numpy import load

    try:
        cfg = json.loads((folder / "classifier.json").read_text())
    except FileNotFoundError:
        raise unusable_classifier(folder, "it has no classifier.json") from None
    except (OSError, ValueError) as e:
        raise unusable_classifier(folder, f"classifier.json is unreadable: {_first_line(e)}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != CLASSIFIER_FORMAT:
        raise unusable_classifier(folder, "classifier.json is not a MuseBridge classifier's")
    classes = cfg.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise unusable_classifier(folder, "classifier.json names no two distinct classes")
    try:
        section = check_model_section(cfg.get("model"), "classifier.json")
    except ModelFileError as e:
        raise unusable_classifier(folder, str(e).split(";")[0]) from None
    if "arch" in section:
        raise unusable_classifier(folder, f"its trunk is an {section['arch']}, not a transformer")
    vocab = Vocabulary.load(folder / "vocab.json")
    if len(vocab) != section["vocab_size"]:
        raise unusable_classifier(folder, f"classifier.json expects {section['vocab_size']} tokens but vocab.json has {len(vocab)}")
    try:
        weights = load((folder / "classifier.safetensors").read_bytes())
    except FileNotFoundError:
        raise unusable_classifier(folder, "classifier.safetensors is missing") from None
    except Exception as e:  # safetensors raises its own error (and others) on a cut or garbled file
        raise unusable_classifier(folder, f"classifier.safetensors is corrupt: {_first_line(e)}") from None
    shapes = classifier_shapes(section, len(classes))
    odd = sorted(set(shapes) ^ set(weights))
    if odd:
        raise unusable_classifier(folder, f"classifier.safetensors {'lacks' if odd[0] in shapes else 'has an unknown'} tensor {odd[0]}")
    for key, shape in shapes.items():
        w = weights[key]
        if tuple(w.shape) != shape or w.dtype not in (np.float16, np.float32):
            raise unusable_classifier(folder, f"tensor {key} is {w.dtype} {tuple(w.shape)}, expected {shape}")
    bad = damaged_tensor(weights)
    if bad:
        raise unusable_classifier(folder, f"classifier.safetensors is damaged: {bad}")
    info = cfg.get("info")
    return ClassifierFolder(folder, section, list(classes), vocab, info if isinstance(info, dict) else {}, weights)


def read_critic(folder: str | Path) -> ClassifierFolder:
    """`read_classifier` of a folder that must be a critic (it has the class "real")."""
    spec = read_classifier(folder)
    if REAL not in spec.classes:
        named = ", ".join(spec.classes[:4]) + (", ..." if len(spec.classes) > 4 else "")
        raise ClassifierFileError(f"{folder} is a classifier of {named}, not a critic (it has no {REAL!r} class); "
                                  "pass a folder written by musebridge train --arch critic")
    return spec


# --- ONNX Runtime ------------------------------------------------------------------------------------
_SESSIONS: dict[tuple[str, int | None], object] = {}  # graph path (keyed by the folder's hash) -> session


def _graph_inputs(spec: ClassifierFolder) -> tuple:
    """(GraphConfig, weights under the decoder's names + out.*, pad) of a checked folder."""
    weights = {k.removeprefix(TRUNK): v for k, v in spec.weights.items()}
    return GraphConfig.from_dict(spec.section), weights, spec.vocab.pad


def _session(spec: ClassifierFolder, threads: int | None):
    """The ORT session of a folder's cached graph; a cached file that will not load is rebuilt once."""
    def open_cached(rebuild: bool):
        path = classifier_graph_path(spec.folder, *_graph_inputs(spec), rebuild=rebuild)
        key = (str(path), threads)
        if key not in _SESSIONS or rebuild:
            _SESSIONS[key] = ort_session(path, threads, ["CPUExecutionProvider"])
        return _SESSIONS[key]

    return rebuilt_on_damage(open_cached)


class OrtClassifier:
    """A classifier folder on ONNX Runtime: class probabilities of token windows."""

    def __init__(self, spec: ClassifierFolder, threads: int | None = None):
        self.spec = spec
        self.classes, self.vocab, self.context = spec.classes, spec.vocab, spec.context
        self._session = _session(spec, threads)

    def run(self, windows: Sequence, length: int | None = None, output: str = "probs") -> np.ndarray:
        """`output` ("probs" or "logits") [N,C] of windows cropped to `length` (default: the context).
        Windows are padded only to the longest one: pad positions never reach a real one."""
        length = min(crop_length(length, self.context), max((len(w) for w in windows), default=1))
        toks, feats = prepare(windows, self.vocab, max(length, 1))
        out = [self._session.run([output], {"tokens": toks[i : i + BATCH], "feats": feats[i : i + BATCH]})[0]
               for i in range(0, len(toks), BATCH)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, windows: Sequence, length: int | None = None) -> np.ndarray:
        """Class probabilities [N,C] (the PyTorch `critic.predict`'s)."""
        return self.run(windows, length)

    def p_real(self, windows: Sequence, length: int | None = None) -> np.ndarray:
        """The critic's P(real) per window (its last `length` tokens)."""
        return real_scores(self.predict, self.classes, self.context, windows, length)


def open_classifier(folder: str | Path, threads: int | None = None) -> OrtClassifier:
    """A classifier folder, checked, its graph built on first use and opened (`threads`: ORT's intra-op threads)."""
    return OrtClassifier(read_classifier(folder), threads)


def open_critic(folder: str | Path, threads: int | None = None) -> OrtClassifier:
    """`open_classifier` of a folder that must be a critic."""
    return OrtClassifier(read_critic(folder), threads)


def rank_continuations(critic_dir: str | Path, prompt, continuations: list[list[int]], vocab: Vocabulary,
                       style: str | None = None, threads: int | None = None) -> list[float]:
    """The critic's P(real) for each continuation (its tokens) of `prompt`: higher is better.
    What `generate --variations` and the app's variations rank by; ONNX Runtime, no torch."""
    critic = open_critic(critic_dir, threads)
    if critic.vocab != vocab:
        raise ClassifierFileError(f"critic {critic_dir} uses another vocabulary than the model; pass the critic trained for it")
    return critic_scores(critic, prompt_tokens(prompt, vocab, style, prompt.families), continuations)


def critic_scores(critic: OrtClassifier, head: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
    """P(real) of each continuation after the tokens `head`: the critic reads the last of
    `head` + continuation that fit its context. The ranking `rank_continuations` and the jam share."""
    head = list(head[-critic.context:])
    return [float(s) for s in critic.p_real([head + list(t) for t in continuations])]
