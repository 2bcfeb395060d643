"""Model folder -> ONNX file: read the safetensors with numpy, build, cache, quantize.

Graphs are built on first use and kept in the user's cache, keyed by a hash of the
weights, the config and this builder's version, so a retrained model or a new builder
never meets a stale graph:

    $XDG_CACHE_HOME/musebridge/onnx/<hash>/{step,chunk}-<dtype>.onnx   (~/.cache when
    unset; MUSEBRIDGE_CACHE_DIR replaces $XDG_CACHE_HOME/musebridge)

dtypes: `fp32` (fp32 math; fp16 weights stay fp16 on disk behind a Cast that ORT folds
at load, so the file is as small as the model and the numbers are the same), `fp16`
(fp16 math and cache: for GPUs) and `int8` (dynamic 8-bit weights for the matmuls and
the output head, ORT's quantize_dynamic with u8 weights: `INT8_OPTIONS`; fp32 cache).

Attention: the fp32 and int8 step graphs compute it with ONNX's fused `Attention` op
(`attention="fused"`, faster on ONNX Runtime's CPU: docs/PERFORMANCE.md "Fused attention");
fp16 graphs, made for GPUs (ORT CUDA, TensorRT) where that was not measured, keep the
MatMul/Softmax spelling (`"matmul"`). Pass `attention=` to choose; a non-default choice is
cached in its own subfolder `<hash>/<attention>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from musebridge.engine.training.checkpoint import DEFAULT_MODEL, load_vocab, read_model_config
from musebridge.engine.training.checkpoint import expected_shapes as shapes_of
from musebridge.engine.training.checkpoint import read_weights as checked_weights
from musebridge.errors import GraphFileError, ModelFileError
from musebridge.files import write_atomic

from .graph import ATTENTIONS, KINDS, GraphConfig, build_graph

BUILDER_VERSION = 3  # 2: fused Attention op in the fp32/int8 step graphs; 3: int8 with u8 weights (INT8_OPTIONS)
DTYPES = ("fp32", "fp16", "int8")
DEFAULT_ATTENTION = {"fp32": "fused", "fp16": "matmul", "int8": "fused"}
# u8 weights: ORT multiplies them with the u8 activations exactly on every CPU. s8 weights (QInt8) go
# through AVX2's vpmaddubsw on CPUs without VNNI, whose int16 pair sums saturate: logits 0.06-0.24 of
# their range off there (docs/PERFORMANCE.md "int8"; python -m musebridge.onnx_export.int8_bench).
INT8_OPTIONS = {"weight_type": "QUInt8", "per_channel": False, "reduce_range": False}

T = TypeVar("T")


def model_folder(folder: str | Path | None) -> Path:
    return Path(folder) if folder else DEFAULT_MODEL


def read_config(folder: str | Path | None) -> GraphConfig:
    """The graph sizes of a model folder, checked by the same rules as the PyTorch loader
    (`checkpoint.read_model_config`, `load_vocab`): one-line errors for a bad folder."""
    folder = model_folder(folder)
    section = read_model_config(folder)["model"]
    load_vocab(folder)  # the vocabulary agrees with the sizes
    try:
        return GraphConfig.from_dict(section)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{folder}/config.json cannot run on ONNX Runtime ({e})") from None


def expected_shapes(cfg: GraphConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a model of these sizes (`checkpoint.expected_shapes`, the one definition)."""
    return shapes_of(asdict(cfg))


def read_weights(folder: str | Path | None) -> tuple[GraphConfig, dict[str, np.ndarray]]:
    """(config, weights as numpy) of a model folder, checked against each other, their
    checksum and for NaN/huge values by `checkpoint.read_weights` (the PyTorch loader's
    checks). No torch."""
    folder = model_folder(folder)
    cfg = read_config(folder)
    return cfg, checked_weights(folder)


def files_hash(folder: Path, names: tuple[str, ...], salt: str) -> str:
    """sha256 of `salt` and the files `names` in `folder`, shortened: a cache key (OSError names the
    file that cannot be read). Every graph cache here is keyed by one."""
    h = hashlib.sha256(salt.encode())
    for name in names:
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def model_hash(folder: str | Path | None) -> str:
    """Hash of weights + config + builder version: the cache key of a model's graphs."""
    folder = model_folder(folder)
    try:
        return files_hash(folder, ("config.json", "model.safetensors"), f"musebridge-onnx {BUILDER_VERSION}\n")
    except OSError as e:
        raise ModelFileError(f"{e.filename} is unreadable ({e.strerror or e}); re-copy or retrain the model") from None


def cache_root() -> Path:
    base = os.environ.get("MUSEBRIDGE_CACHE_DIR")
    if base:
        return Path(base) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "musebridge" / "onnx"


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise GraphFileError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def resolve_attention(dtype: str, attention: str | None = None) -> str:
    """The step graph's attention spelling: `attention`, else the default of `dtype`."""
    _check_dtype(dtype)
    attention = attention or DEFAULT_ATTENTION[dtype]
    if attention not in ATTENTIONS:
        raise GraphFileError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    return attention


def build_models(folder: str | Path | None, dtype: str = "fp32", attention: str | None = None) -> dict:
    """{kind: onnx.ModelProto} for a model folder (int8: the fp32 graphs, ready for quantization)."""
    attention = resolve_attention(dtype, attention)
    cfg, weights = read_weights(folder)
    if dtype == "int8":  # the quantizer wants plain fp32 initializers under the matmuls
        weights = {k: v.astype(np.float32) for k, v in weights.items()}
    compute = "fp16" if dtype == "fp16" else "fp32"
    return {kind: build_graph(cfg, weights, kind, compute, attention) for kind in KINDS}


def write_graphs(folder: str | Path | None, out_dir: str | Path, dtype: str = "fp32",
                 attention: str | None = None) -> dict[str, Path]:
    """Build and write `out_dir/{step,chunk}-<dtype>.onnx`, each atomically (no reader sees half a file)."""
    import onnx

    out_dir = Path(out_dir)
    paths = {}
    for kind, model in build_models(folder, dtype, attention).items():
        path = paths[kind] = out_dir / f"{kind}-{dtype}.onnx"
        write_atomic(path, lambda tmp, m=model: _quantize(m, tmp) if dtype == "int8" else onnx.save_model(m, tmp),
                     GraphFileError)
    return paths


def _quantize(model, out: str, options: dict | None = None) -> None:
    """Dynamic int8 MatMuls (weights quantized once, activations per call); `options`: quantize_dynamic's
    per_channel / reduce_range / weight_type ("QInt8", "QUInt8"), default INT8_OPTIONS."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts = dict(INT8_OPTIONS if options is None else options)
    opts["weight_type"] = QuantType[opts.get("weight_type", "QInt8")]
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer chats on the root logger
    quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True}, **opts)


def graph_paths(folder: str | Path | None = None, dtype: str = "fp32", rebuild: bool = False,
                attention: str | None = None) -> dict[str, Path]:
    """{kind: path} of a model folder's cached graphs, built on first use (`attention`: see the module doc)."""
    chosen = resolve_attention(dtype, attention)
    out = cache_root() / model_hash(folder)
    if chosen != DEFAULT_ATTENTION[dtype]:
        out = out / chosen
    paths = {kind: out / f"{kind}-{dtype}.onnx" for kind in KINDS}
    if rebuild or not all(p.exists() for p in paths.values()):
        paths = write_graphs(folder, out, dtype, chosen)
        info = {"builder_version": BUILDER_VERSION, "model": str(model_folder(folder))}
        (out / "source.json").write_text(json.dumps(info, indent=1) + "\n")
    return paths


def rebuilt_on_damage(open_cached: Callable[[bool], T]) -> T:
    """`open_cached(rebuild=False)`; when a cached graph will not load (GraphFileError), once more
    with `rebuild=True`: a damaged cache entry is only a cache, so it is built again."""
    try:
        return open_cached(False)
    except GraphFileError:
        return open_cached(True)


def exported_paths(folder: str | Path, dtype: str | None = None) -> dict[str, Path]:
    """The graphs in a folder written by `musebridge export` (dtype: the one asked, else fp32, fp16, int8)."""
    folder = Path(folder)
    for dt in [dtype] if dtype else DTYPES:
        paths = {k: folder / f"{k}-{dt}.onnx" for k in KINDS}
        if all(p.is_file() for p in paths.values()):
            return paths
    raise GraphFileError(f"{folder} holds no {dtype or ''} graphs (step-*.onnx and chunk-*.onnx); "
                         "write them with musebridge export")


def decoder_graphs(model_dir: str | Path | None, dtype: str, load: Callable[[dict[str, Path]], T],
                   onnx_dir: str | Path | None = None) -> T:
    """`load({kind: path})` of a model's decoder graphs: those `musebridge export` wrote to `onnx_dir`,
    else the cached build (built on first use, and again when the cached files will not load).
    What every graph runtime opens through (ONNX Runtime, TensorRT)."""
    if onnx_dir is not None:
        return load(exported_paths(onnx_dir, dtype))
    folder = model_folder(model_dir)
    return rebuilt_on_damage(lambda rebuild: load(graph_paths(folder, dtype, rebuild=rebuild)))


def export(folder: str | Path | None, out_dir: str | Path, dtype: str = "fp32",
           attention: str | None = None) -> dict[str, Path]:
    """Write `out_dir/{step,chunk}-<dtype>.onnx` and `out_dir/export.json` (what they are, how to feed them)."""
    folder = model_folder(folder)
    cfg = read_config(folder)
    attention = resolve_attention(dtype, attention)
    paths = write_graphs(folder, out_dir, dtype, attention)
    info = {
        "model": str(folder), "model_hash": model_hash(folder), "dtype": dtype, "builder_version": BUILDER_VERSION,
        "step_attention": attention,
        "graphs": {k: p.name for k, p in paths.items()},
        "graph_kinds": {"step": "n = 1 (one token per row)", "chunk": "any n >= 1 (prompt chunks, appends)"},
        "inputs": {"tokens": "[B,n] int64", "feats": "[B,n,5] int64 (phase, beat, chord, part, countdown)",
                   "start": "[] int64, position of tokens[:,0]",
                   "cache": f"[L,2,B,H,C,D] = {list(cfg.cache_shape(1))} with B=1, {'fp16' if dtype == 'fp16' else 'fp32'}"},
        "outputs": {"logits": "[B,V] float32 of the last position",
                    "cache_out": "the cache with the new rows: bind it to the same buffer as cache (in place)"},
    }
    (Path(out_dir) / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return paths
