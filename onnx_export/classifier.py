"""The critic / style classifier as one ONNX graph, built from numpy weights (no torch).

    inputs   tokens [B,T] int64 (pad after the window), feats [B,T,5] int64
             (`engine/decode/critic_score.prepare` makes both)
    outputs  logits [B,C] float32, probs [B,C] float32 (their softmax)

The math is `SequenceClassifier.forward` (engine/training/critic.py): the `MuseModel` trunk over the
whole window from position 0 (`MuseModel.hidden`), its final hidden states averaged over
the non-pad positions, then a Linear. The trunk's pieces are the decoder's (graph.py:
embeddings, rotary, q/k/v, MLP, residual projection). Attention is the blocked form of
`SparseSelfAttention.forward`, as PyTorch computes it for training: the window padded to
whole blocks of `window`, local heads reading their block and the one before, strided heads
attending along the blocks one phase at a time -- at 512 tokens 1.7x faster on ORT's CPU
than one dense [T,T] masked matrix per head (docs/MODEL_CARD.md "Critic"). Pad positions
sit after the window, so causality alone keeps them out of every real query.

Graphs are cached like the decoder's (build.py): `$cache/<hash>/classifier-fp32.onnx`, the
hash over the folder's three files, BUILDER_VERSION and CLASSIFIER_VERSION.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from musebridge.errors import GraphFileError
from musebridge.files import write_atomic

from .build import BUILDER_VERSION, cache_root, files_hash
from .graph import GraphConfig, _Builder, _embed, _layer_norm, _merge_heads, _mlp, _qkv_heads, _rope

CLASSIFIER_VERSION = 1  # bump when this graph changes: cached graphs are rebuilt
CLASSIFIER_FILES = ("classifier.json", "classifier.safetensors", "vocab.json")  # vocab.json: the pad id


class _Blocks(NamedTuple):
    """The window cut into blocks of `window` positions, the last one padded (names in the graph)."""

    t: str  # [1]: T
    pads: str  # Pad's pads for axis 3 of [B,1,H,T,D]: up to whole blocks
    local: str  # [nb,W,2W] additive mask of the local heads: their block and the one before
    strided: str  # [nb,nb] additive mask of the strided heads: causal along the blocks


def _blocks(g: _Builder, cfg: GraphConfig) -> _Blocks:
    W = cfg.window
    t = g.op("Slice", g.op("Shape", "tokens"), g.i64("c1", [1]), g.i64("c2", [2]))
    pad = g.op("Mod", g.op("Sub", g.i64("W1", [W]), g.op("Mod", t, "W1")), "W1")  # [1]
    pads = g.op("Concat", g.i64("p0", [0] * 8), pad, g.i64("p00", [0]), axis=0)
    blk = g.op("Range", g.i64("zero", 0), g.op("Squeeze", g.op("Div", g.op("Add", t, pad), "W1")), g.i64("one", 1))  # [nb]
    f0, ninf = g.const("f0", np.array(0, g.fdt)), g.const("ninf", np.array(-np.inf, g.fdt))
    # query i of a block reads keys j of [previous block, own block] with 0 <= (i + W) - j < W; block 0 has no previous
    i, j = np.arange(W)[:, None], np.arange(2 * W)[None, :]
    first = g.op("Unsqueeze", g.op("Equal", blk, "zero"), g.i64("ax12", [1, 2]))  # [nb,1,1]
    no_prev = g.op("And", first, g.const("prev_cols", (j < W)[None]))  # [nb,1,2W]
    ok = g.op("And", g.const("local_pattern", (j > i) & (j <= i + W)), g.op("Not", no_prev))
    causal = g.op("GreaterOrEqual", g.op("Unsqueeze", blk, g.i64("ax_m1", [-1])), g.op("Unsqueeze", blk, g.i64("ax0", [0])))
    return _Blocks(t, pads, g.op("Where", ok, f0, ninf, name="bias_local"), g.op("Where", causal, f0, ninf, name="bias_strided"))


def _attend(g: _Builder, q: str, k: str, v: str, bias: str) -> str:
    """softmax(q kᵀ + bias) v (q comes pre-scaled by 1/sqrt(D))."""
    s = g.op("Add", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 2, 4, 3])), bias)
    return g.op("MatMul", g.op("Softmax", s, axis=-1), v)


def _sparse_attention(g: _Builder, cfg: GraphConfig, b: _Blocks, q: str, k: str, v: str) -> str:
    """The blocked form of `SparseSelfAttention.forward` on q, k, v [B,1,H,T,D]: local heads read a
    block and the one before, strided heads attend along the blocks one phase at a time. Pad
    positions sit after the window: no real query reads them (causal)."""
    hl, hs, W, D = cfg.local_heads, cfg.n_head - cfg.local_heads, cfg.window, cfg.head_dim
    heads = g.i64("heads", [hl, hs])
    (q_l, q_s), (k_l, k_s), (v_l, v_s) = (g.op("Split", g.op("Pad", t, b.pads), heads, axis=2, outs=2) for t in (q, k, v))
    blocks_l = g.i64("blocks_l", [0, hl, -1, W, D])  # [B,hl,nb,W,D]
    q_l, k_l, v_l = (g.op("Reshape", t, blocks_l) for t in (q_l, k_l, v_l))
    prev = g.i64("prev_pads", [0, 0, 1, 0, 0, 0, 0, 0, 0, 0])

    def with_prev(t: str) -> str:  # [B,hl,nb,2W,D]: the previous block's rows, then the block's own
        shifted = g.op("Slice", g.op("Pad", t, prev), g.i64("s0", [0]), g.i64("sm1", [-1]), g.i64("ax2", [2]))
        return g.op("Concat", shifted, t, axis=3)

    y_l = _attend(g, q_l, with_prev(k_l), with_prev(v_l), b.local)  # [B,hl,nb,W,D]
    phases = g.i64("blocks_s", [0, hs, -1, W, D])
    q_s, k_s, v_s = (g.op("Transpose", g.op("Reshape", t, phases), perm=[0, 1, 3, 2, 4]) for t in (q_s, k_s, v_s))
    y_s = g.op("Transpose", _attend(g, q_s, k_s, v_s, b.strided), perm=[0, 1, 3, 2, 4])  # [B,hs,nb,W,D]
    y = g.op("Concat", g.op("Reshape", y_l, g.i64("back_l", [0, 1, hl, -1, D])),
             g.op("Reshape", y_s, g.i64("back_s", [0, 1, hs, -1, D])), axis=2)  # [B,1,H,Tp,D]
    return g.op("Slice", y, g.i64("s0", [0]), b.t, g.i64("ax3", [3]))


def _mean_pool(g: _Builder, h: str, pad: int) -> str:
    """h [B,T,d] averaged over the positions whose token is not `pad` ([B,d]; 0 for an empty window)."""
    keep = g.op("Unsqueeze", g.op("Cast", g.op("Not", g.op("Equal", "tokens", g.i64("pad", pad))), to=g.tdt),
                g.i64("ax_m1", [-1]))
    total = g.op("ReduceSum", g.op("Mul", h, keep), g.i64("ax1", [1]), keepdims=0)
    count = g.op("Max", g.op("ReduceSum", keep, "ax1", keepdims=0), g.const("f1", np.array(1, g.fdt)))
    return g.op("Div", total, count, name="pooled")


def build_classifier_graph(cfg: GraphConfig, weights: dict[str, np.ndarray], pad: int):
    """The onnx.ModelProto of a classifier. `weights`: the trunk's tensors under the decoder's names
    (`tok.weight`, `blocks.0.ln1.weight`, ...) and the Linear's `out.weight` [C,d], `out.bias` [C],
    fp16 or fp32 (fp16 stays fp16 in the file behind a Cast; the math is fp32); `pad`: the pad id."""
    n_classes = weights["out.weight"].shape[0]
    g = _Builder(weights, "fp32")
    blocks = _blocks(g, cfg)
    i = g.op("Range", "zero", g.op("Squeeze", blocks.t), "one", name="i")  # [T]
    cos, sin = _rope(g, cfg, i)  # [T,3,1,2,D/2]
    x, _ = _embed(g, cfg)
    for layer in range(cfg.n_layer):
        p = f"blocks.{layer}."
        q, k, v = _qkv_heads(g, cfg, x, p, cos, sin)  # [B,1,H,T,D], q pre-scaled
        x = _merge_heads(g, cfg, x, _sparse_attention(g, cfg, blocks, q, k, v), p)
        x = _mlp(g, x, p)
    pooled = _mean_pool(g, _layer_norm(g, x, "ln_f"), pad)
    logits = g.op("Add", g.op("MatMul", pooled, g.weight("out_t", g.w("out.weight").T)), g.weight("out_b", g.w("out.bias")),
                  name="logits")
    g.op("Softmax", logits, axis=-1, name="probs")
    return g.model("musebridge_classifier",
                   [("tokens", g.tp.INT64, ["batch", "n"]), ("feats", g.tp.INT64, ["batch", "n", 5])],
                   [("logits", g.tp.FLOAT, ["batch", n_classes]), ("probs", g.tp.FLOAT, ["batch", n_classes])])


def classifier_hash(folder: Path) -> str:
    """The cache key of a classifier folder's graph (OSError when a file cannot be read)."""
    return files_hash(folder, CLASSIFIER_FILES, f"musebridge-classifier {BUILDER_VERSION}.{CLASSIFIER_VERSION}\n")


def classifier_graph_path(folder: Path, cfg: GraphConfig, weights: dict[str, np.ndarray], pad: int,
                          rebuild: bool = False) -> Path:
    """The cached graph of the classifier folder these weights were read from (as `build_classifier_graph`
    takes them), built on first use."""
    import onnx

    try:
        out = cache_root() / classifier_hash(folder)
    except OSError as e:
        raise GraphFileError(f"{e.filename} is unreadable ({e.strerror or e}); re-copy or retrain the classifier") from None
    path = out / "classifier-fp32.onnx"
    if rebuild or not path.exists():
        model = build_classifier_graph(cfg, weights, pad)
        write_atomic(path, lambda tmp: onnx.save_model(model, tmp), GraphFileError)
        info = {"builder_version": BUILDER_VERSION, "classifier_version": CLASSIFIER_VERSION, "classifier": str(folder)}
        (out / "source.json").write_text(json.dumps(info, indent=1) + "\n")
    return path
