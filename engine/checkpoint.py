"""Model folders: `model.safetensors` + `config.json` + `vocab.json`, never pickle.

A model and its vocabulary travel together; loading checks that they agree and turns
every kind of damage (missing file, truncated weights, wrong shapes) into one line
that names the file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from musebridge.errors import MuseBridgeError, VocabError

from .vocab import Vocabulary

MODEL_FORMAT = "musebridge-model"
MODEL_VERSION = 1
DEFAULT_MODEL = Path(__file__).parent / "models" / "default"


class ModelFileError(MuseBridgeError):
    """A model folder that cannot be loaded."""


def save_model(folder: str | Path, model, vocab: Vocabulary, info: dict | None = None, half: bool = False) -> None:
    """Write weights (safetensors), config and vocabulary into `folder`.

    `half` stores fp16 weights (half the size: how the shipped model fits in the repo);
    loading always computes in fp32.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "head.weight"}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": MODEL_FORMAT})
    mcfg = model.cfg.to_dict() if hasattr(model.cfg, "to_dict") else dict(model.cfg)
    cfg = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model": mcfg, "info": info or {}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    vocab.save(folder / "vocab.json")


def read_model_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"model folder {folder} not found; pass a folder written by musebridge train")
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing; the model folder is incomplete (re-copy or retrain it)") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is unreadable ({e}); re-copy or retrain the model") from None
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a MuseBridge model config")
    if cfg.get("version") != MODEL_VERSION:
        raise ModelFileError(f"{path} has model format version {cfg.get('version')}; this MuseBridge reads {MODEL_VERSION}")
    return cfg


def load_vocab(folder: str | Path) -> Vocabulary:
    """The vocabulary of a model folder (checking the folder is a model first)."""
    read_model_config(folder)
    try:
        return Vocabulary.load(Path(folder) / "vocab.json")
    except VocabError as e:
        raise ModelFileError(str(e)) from None


def load_model(folder: str | Path | None = None, device: str = "cpu"):
    """(model, vocab, info) from a model folder (default: the shipped model)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import ModelConfig, MuseModel

    folder = Path(folder) if folder else DEFAULT_MODEL
    cfg = read_model_config(folder)
    vocab = load_vocab(folder)
    section = dict(cfg.get("model") or {})
    try:
        if section.get("arch") == "lstm":
            from .baselines import lstm_model

            mcfg = None
            model = lstm_model(section["vocab_size"], section["d_embed"], section["hidden"], section["layers"])
            vocab_size = section["vocab_size"]
        else:
            mcfg = ModelConfig(**section)
            model = MuseModel(mcfg)
            vocab_size = mcfg.vocab_size
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(f"{folder}/config.json has a bad model section ({e})") from None
    if vocab_size != len(vocab):
        raise ModelFileError(f"{folder}: model expects {vocab_size} tokens but vocab.json has {len(vocab)}; the files do not belong together")
    weights = folder / "model.safetensors"
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise ModelFileError(f"{weights} is missing; re-copy or retrain the model") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{weights} is corrupt ({str(e).splitlines()[0][:120]}); re-copy or retrain the model") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state["head.weight"] = state.get("tok.weight", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{weights} does not match its config ({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), vocab, cfg.get("info", {})
