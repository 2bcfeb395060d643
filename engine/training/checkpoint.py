"""Model folders: `model.safetensors` + `config.json` + `vocab.json`, never pickle.

A model and its vocabulary travel together; loading checks that they agree and turns
every kind of damage (missing file, truncated weights, wrong shapes, sizes no model has,
flipped bits, NaN) into one line that names the file and what to do.

Both loaders -- `load_model` (PyTorch) and the torch-free ONNX build
(`onnx_export/build.py` `read_config`/`read_weights`) -- go through the same checks here:
`read_model_config` (every size in range, sizes consistent), `load_vocab` (the
vocabulary matches the config) and `read_weights` (checksum, every tensor the config
implies and no other, every value finite and of a sane magnitude). They run before
anything is allocated from the config's sizes, so a damaged `context` never tries to
allocate gigabytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from musebridge.errors import ModelFileError, VocabError
from musebridge.files import write_atomic

from ..music.features import BEAT_CYCLE, MAX_CHORD, N_PARTS, ticks_per_beat
from ..music.vocab import Vocabulary, is_real, is_whole

MODEL_FORMAT = "musebridge-model"
MODEL_VERSION = 1
DEFAULT_MODEL = Path(__file__).parents[1] / "models" / "default"
CHECKSUM_KEY = "weights_sha256"  # in config.json's info: sha256 of model.safetensors, written by save_model
# |w| at or above this is damage, not training: the shipped model's largest weight is 1.55, and
# trained transformers of this size stay far below; a flipped exponent bit lands far above
WEIGHT_LIMIT = 1e4

# The transformer's sizes in config.json: name -> (default, low, high). The defaults are
# ModelConfig's (engine/training/model.py needs torch; tests hold the two equal); the bounds are what
# any model this code can run has: context 65536 is 16 times the shipped model's.
TRANSFORMER_SIZES: dict[str, tuple[int | None, int, int]] = {
    "vocab_size": (None, 1, 1 << 20),
    "n_layer": (4, 1, 64),
    "n_head": (8, 1, 64),
    "d_model": (256, 2, 8192),
    "context": (4096, 1, 65536),
    "window": (128, 1, 65536),
    "local_heads": (0, 0, 63),  # 0: half the heads
    "mlp_ratio": (4, 1, 16),
    "ticks_per_beat": (12, 1, 96),
}
TRANSFORMER_REALS: dict[str, tuple[float, float, float]] = {  # name -> (default, low, high), low inclusive
    "dropout": (0.0, 0.0, 0.99),
    "rope_base": (10000.0, 2.0, 1e9),
}
LSTM_SIZES: dict[str, tuple[int | None, int, int]] = {
    "vocab_size": (None, 1, 1 << 20), "d_embed": (None, 1, 8192), "hidden": (None, 1, 16384), "layers": (None, 1, 16),
}


def check_model_section(section, where: str) -> dict:
    """The `model` section of a config.json, every size checked: the one definition both
    loaders use. Returns it with defaults filled (transformer: without `arch`).

    One line names the first bad size and its range; `where` names the file.
    """
    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{where} has a bad model section: {what}; re-copy or retrain the model")

    if not isinstance(section, dict):
        raise bad("it is missing or not an object")
    section = dict(section)
    arch = section.pop("arch", "transformer")
    if arch not in ("transformer", "lstm"):
        raise bad(f"arch {arch!r} (use transformer or lstm)")
    sizes, reals = (TRANSFORMER_SIZES, TRANSFORMER_REALS) if arch == "transformer" else (LSTM_SIZES, {})
    unknown = sorted(set(section) - set(sizes) - set(reals))
    if unknown:
        raise bad(f"unknown setting {unknown[0]!r}")
    out: dict = {} if arch == "transformer" else {"arch": arch}
    for name, (default, lo, hi) in sizes.items():
        value = section.get(name, default)
        if value is None:
            raise bad(f"{name} is missing")
        if not is_whole(value) or not lo <= value <= hi:
            raise bad(f"{name} {value!r} (use a whole number {lo}..{hi})")
        out[name] = int(value)
    for name, (default, lo, hi) in reals.items():
        value = section.get(name, default)
        if not is_real(value) or not lo <= value <= hi:
            raise bad(f"{name} {value!r} (use a number {lo:g}..{hi:g})")
        out[name] = float(value)
    if arch == "lstm":
        return out
    n_head, d_model = out["n_head"], out["d_model"]
    if d_model % n_head or (d_model // n_head) % 2:
        raise bad(f"d_model {d_model} does not split into {n_head} heads of even size")
    if out["window"] > out["context"] or out["context"] % out["window"]:
        raise bad(f"context {out['context']} is not a multiple of window {out['window']}")
    out["local_heads"] = out["local_heads"] or n_head // 2
    if not 0 < out["local_heads"] < n_head:
        raise bad(f"local_heads {out['local_heads']} (use 1..{n_head - 1} of {n_head} heads)")
    return out


def expected_shapes(section: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a transformer of these sizes has (head.weight is tied to tok.weight, not stored)."""
    d, f = section["d_model"], section["mlp_ratio"] * section["d_model"]
    shapes = {"tok.weight": (section["vocab_size"], d), "phase.weight": (section["ticks_per_beat"], d),
              "beat.weight": (BEAT_CYCLE, d), "chord.weight": (MAX_CHORD, d), "part.weight": (N_PARTS + 1, d),
              "countdown.weight": (N_PARTS + 1, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(section["n_layer"]):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.weight": (d,), p + "ln1.bias": (d,), p + "ln2.weight": (d,), p + "ln2.bias": (d,),
                       p + "attn.qkv.weight": (3 * d, d), p + "attn.proj.weight": (d, d),
                       p + "mlp.fc.weight": (f, d), p + "mlp.proj.weight": (d, f)})
    return shapes


def weights_checksum(path: str | Path) -> str:
    """sha256 of a weights file: what save_model records and both loaders verify."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(folder: str | Path, model, vocab: Vocabulary, info: dict | None = None, half: bool = False) -> None:
    """Write weights (safetensors), config and vocabulary into `folder`.

    `half` stores fp16 weights (half the size: how the shipped model fits in the repo);
    loading always computes in fp32. The weights' sha256 goes into the config's info, so
    a copy damaged later (a bit flip on a disk, a truncated download) is refused at load.
    Every file goes through `write_atomic`: a failed write (a full disk while training saves
    its best model, or while packing over the shipped one) leaves the folder's old files
    whole, and new files get the usual permissions (safetensors alone writes them 0600).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "head.weight"}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    weights = folder / "model.safetensors"
    write_atomic(weights, lambda tmp: save_file(state, tmp, metadata={"format": MODEL_FORMAT}), ModelFileError)
    mcfg = model.cfg.to_dict() if hasattr(model.cfg, "to_dict") else dict(model.cfg)
    info = {**(info or {}), CHECKSUM_KEY: weights_checksum(weights)}
    cfg = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model": mcfg, "info": info}
    write_atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=1) + "\n"),
                 ModelFileError)
    write_atomic(folder / "vocab.json", vocab.save, ModelFileError)


def read_model_config(folder: str | Path) -> dict:
    """config.json of a model folder, its model section checked and filled (`check_model_section`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"model folder {folder} not found; pass a folder written by musebridge train")
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing; the model folder is incomplete (re-copy or retrain it)") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is unreadable ({str(e).splitlines()[0][:120]}); re-copy or retrain the model") from None
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a MuseBridge model config")
    if cfg.get("version") != MODEL_VERSION:
        raise ModelFileError(f"{path} has model format version {cfg.get('version')}; this MuseBridge reads {MODEL_VERSION}")
    info = cfg.get("info", {})
    if not isinstance(info, dict) or not isinstance(info.get(CHECKSUM_KEY, ""), str):
        raise ModelFileError(f"{path} has a bad info section; re-copy or retrain the model")
    return {**cfg, "model": check_model_section(cfg.get("model"), str(path)), "info": info}


def load_vocab(folder: str | Path) -> Vocabulary:
    """The vocabulary of a model folder, checked against the folder's config (sizes that
    disagree are two files that do not belong together)."""
    section = read_model_config(folder)["model"]
    try:
        vocab = Vocabulary.load(Path(folder) / "vocab.json")
    except VocabError as e:
        raise ModelFileError(str(e)) from None
    if section["vocab_size"] != len(vocab):
        raise ModelFileError(f"{folder}: config.json expects {section['vocab_size']} tokens but vocab.json has "
                             f"{len(vocab)}; the files do not belong together (re-copy or retrain the model)")
    if "ticks_per_beat" in section and section["ticks_per_beat"] < ticks_per_beat(vocab):
        raise ModelFileError(f"{folder}: config.json has ticks_per_beat {section['ticks_per_beat']} but vocab.json "
                             f"needs {ticks_per_beat(vocab)}; the files do not belong together (re-copy or retrain the model)")
    return vocab


def read_weights(folder: str | Path, cfg: dict | None = None) -> dict[str, np.ndarray]:
    """The tensors of `folder/model.safetensors` as numpy (no torch), each checked: the
    file's checksum (when config.json records one), exactly the tensors a transformer of
    the config's sizes has, and every floating value finite and below `WEIGHT_LIMIT`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    folder = Path(folder)
    cfg = cfg if cfg is not None else read_model_config(folder)
    path = folder / "model.safetensors"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing; re-copy or retrain the model") from None
    except OSError as e:
        raise ModelFileError(f"{path} is unreadable ({e.strerror or e}); re-copy or retrain the model") from None
    recorded = cfg["info"].get(CHECKSUM_KEY)
    if recorded and hashlib.sha256(data).hexdigest() != recorded:
        raise ModelFileError(f"{path} does not match the checksum in {folder / 'config.json'}: it was damaged or "
                             "changed after it was saved; re-copy or retrain the model")
    try:
        weights = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ModelFileError(f"{path} is corrupt ({msg}); re-copy or retrain the model") from None
    section = cfg["model"]
    if section.get("arch", "transformer") == "transformer":
        shapes = expected_shapes(section)
        missing, extra = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
        sizes = f"n_layer {section['n_layer']}, d_model {section['d_model']}"
        if missing or extra:
            what = f"it lacks {missing[0]}, which {sizes} need" if missing else f"it has {extra[0]}, which {sizes} do not have"
            raise ModelFileError(f"{path} does not match {folder / 'config.json'}: {what}; re-copy or retrain the model")
        for key, shape in shapes.items():
            got = weights[key]
            if tuple(got.shape) != shape or got.dtype not in (np.float16, np.float32):
                raise ModelFileError(f"{path} does not match {folder / 'config.json'} ({key}: {got.dtype} "
                                     f"{tuple(got.shape)}, expected {shape}); re-copy or retrain the model")
    bad = damaged_tensor(weights)
    if bad:
        raise ModelFileError(f"{path} is damaged: {bad}; re-copy or retrain the model")
    return weights


def damaged_tensor(weights: dict[str, np.ndarray]) -> str | None:
    """"tensor K holds NaN" (infinity, a huge value) for the first damaged tensor, else None: the
    value rule every weights reader applies (models here, classifiers in critic_score.py)."""
    for key, w in weights.items():
        if w.dtype.kind == "f" and w.size and not float(np.max(np.abs(w))) < WEIGHT_LIMIT:
            return f"tensor {key} holds {_worst(w)}"
    return None


def _worst(w: np.ndarray) -> str:
    """What is wrong with a tensor's values, for the message."""
    if np.isnan(w).any():
        return "NaN"
    if np.isinf(w).any():
        return "infinity"
    return f"a value of {float(np.max(np.abs(w))):.3g} (sane weights stay below {WEIGHT_LIMIT:g})"


def load_model(folder: str | Path | None = None, device: str = "cpu"):
    """(model, vocab, info) from a model folder (default: the shipped model).

    Everything is checked (`read_model_config`, `load_vocab`, `read_weights`) before the
    model is built, so no size from a damaged config ever allocates anything.
    """
    import torch

    from .model import ModelConfig, MuseModel

    folder = Path(folder) if folder else DEFAULT_MODEL
    cfg = read_model_config(folder)
    vocab = load_vocab(folder)
    weights = read_weights(folder, cfg)
    section = cfg["model"]
    if section.get("arch") == "lstm":
        from .baselines import lstm_model

        model = lstm_model(section["vocab_size"], section["d_embed"], section["hidden"], section["layers"])
    else:
        model = MuseModel(ModelConfig(**section))
    state = {k: torch.from_numpy(v.astype(np.float32) if v.dtype.kind == "f" else v.copy()) for k, v in weights.items()}
    state["head.weight"] = state.get("tok.weight", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{folder / 'model.safetensors'} does not match its config "
                             f"({str(e).splitlines()[0][:160]}); re-copy or retrain the model") from None
    return model.to(device).eval(), vocab, cfg.get("info", {})
