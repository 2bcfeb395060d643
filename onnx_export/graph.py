"""The MuseBridge decoder as ONNX graphs with a fixed-size KV cache updated in place.

Built directly with `onnx.helper` from the numpy weights: no torch. Two graphs, one
interface:

    inputs   tokens [B,n] int64, feats [B,n,5] int64, start [] int64 (position of tokens[:,0]),
             cache [L,2,B,H,C,D] (keys 0, values 1; rows 0..start-1 hold the past)
    outputs  logits [B,V] float32 of the last position, cache_out (the updated cache)

- `chunk`: any n >= 1 (prompt chunks of up to 512, appends);
- `step`: n = 1, fewer and smaller ops (the one that runs per generated token).

What keeps them fast (shared/notes/decode-on-this-cpu.md):
- the cache is read only by Gathers of exactly the rows the heads need, for all layers
  at once, from a free Reshape of the graph input to [L·2·B·H·C, D]. The index tensors
  have fixed sizes (local heads: the window-1 rows before the query; strided heads:
  strided_rows-1 rows at stride `window`), so a step at 4096 costs what it costs at 256;
- the new tokens' own keys/values are used straight from the projection, never read
  back, so every layer's new rows leave through ONE ScatterND that reads the graph input
  `cache` and writes the graph output `cache_out`. Bind both to one buffer (IOBinding)
  and ORT's ScatterND skips its copy: the update is in place.

Attention in the step graph, two spellings (`attention=`): "matmul" (MatMul -> Add(bias) ->
Softmax -> MatMul over all heads, both head groups' rows padded to one count) or "fused":
ONNX's `Attention` op (opset 23), two calls per layer -- local heads over their W keys,
strided heads over their S keys, each group gathered without padding, the gathered rows fed
as `past_key`/`past_value` and the new token as K/V. The chunk graph always uses the MatMul
spelling (its strided heads read different rows per query).

The math is `MuseModel.forward_cached` (engine/training/model.py); tests/test_onnx.py holds the
graphs to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from musebridge.engine.training.model_config import ModelConfig

OPSET = 20  # Gelu(approximate="tanh") is opset 20
FUSED_OPSET = 23  # the fused `Attention` op is opset 23
ATTENTIONS = ("matmul", "fused")
KINDS = ("step", "chunk")


@dataclass
class GraphConfig(ModelConfig):
    """The sizes a graph needs: the model's own `ModelConfig` (its defaults and checks), from a
    model folder's config.json `model` section."""

    @classmethod
    def from_dict(cls, m: dict) -> "GraphConfig":
        if m.get("arch", "transformer") != "transformer":
            raise ValueError(f"only the transformer exports to ONNX, not {m.get('arch')!r}")
        return cls(**{f.name: m[f.name] for f in fields(ModelConfig) if f.name in m})

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        return (self.n_layer, 2, batch, self.n_head, self.context, self.head_dim)


def rope_tables(cfg: GraphConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [context, head_dim/2] computed as engine/training/model.py does (fp32 angles)."""
    half = cfg.head_dim // 2
    inv = np.float32(1.0) / (np.float32(cfg.rope_base) ** (np.arange(half, dtype=np.float32) / np.float32(half)))
    ang = np.arange(cfg.context, dtype=np.float32)[:, None] * inv.astype(np.float32)[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class _Builder:
    """onnx.helper with names handled: every op returns its output name(s)."""

    def __init__(self, weights: dict[str, np.ndarray], compute: str):
        from onnx import TensorProto, helper, numpy_helper

        if compute not in ("fp32", "fp16"):
            raise ValueError(f"compute must be fp32 or fp16, not {compute!r}")
        self.h, self.nh, self.tp = helper, numpy_helper, TensorProto
        self.weights = weights
        self.fdt = np.float32 if compute == "fp32" else np.float16
        self.tdt = TensorProto.FLOAT if compute == "fp32" else TensorProto.FLOAT16
        self.nodes, self.inits, self.names, self.n = [], [], set(), 0

    def const(self, name: str, arr: np.ndarray) -> str:
        """An initializer; a name already made is reused (constants shared across layers)."""
        if name not in self.names:
            self.names.add(name)
            self.inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def i64(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def op(self, kind: str, *inputs: str, outs: int = 1, name: str | None = None, **attrs):
        self.n += 1
        tag = name or f"{kind.lower()}_{self.n}"
        outputs = [tag] if outs == 1 else [f"{tag}_{i}" for i in range(outs)]
        self.nodes.append(self.h.make_node(kind, list(inputs), outputs, name=f"n{self.n}_{kind}", **attrs))
        return outputs[0] if outs == 1 else outputs

    def weight(self, name: str, arr: np.ndarray) -> str:
        """An initializer in compute precision. fp16 weights under fp32 math are stored fp16
        behind a Cast: half the file, and ORT folds the Cast once at load."""
        if self.fdt == np.float32 and arr.dtype == np.float16:
            return self.op("Cast", self.const(name + "_f16", arr), to=self.tp.FLOAT, name=name)
        return self.const(name, arr.astype(self.fdt))

    def w(self, key: str) -> np.ndarray:
        return self.weights[key]

    def model(self, name: str, inputs: list[tuple], outputs: list[tuple], opset: int = OPSET):
        """The onnx.ModelProto of the nodes made so far; inputs/outputs as (name, element type, dims)."""
        vi = self.h.make_tensor_value_info
        graph = self.h.make_graph(self.nodes, name, inputs=[vi(*i) for i in inputs], outputs=[vi(*o) for o in outputs],
                                  initializer=self.inits)
        model = self.h.make_model(graph, opset_imports=[self.h.make_opsetid("", opset)], producer_name="musebridge")
        model.ir_version = 10
        return model


# --- pieces both graphs share ------------------------------------------------------------------
def _embed(g: _Builder, cfg: GraphConfig) -> tuple[str, str]:
    """x [B,n,d] = token + the five MuseNet feature embeddings; also the head's [d,V] weight."""
    tok_t = g.weight("tok_t", g.w("tok.weight").T)  # one copy, [d,V]: the head's MatMul reads it in order
    tables = [g.w(k + ".weight") for k in ("phase", "beat", "chord", "part", "countdown")]
    offs = np.cumsum([0] + [t.shape[0] for t in tables[:-1]])
    big = np.iinfo(np.int64).max
    fidx = g.op("Add", g.op("Mod", "feats", g.i64("fmod", [cfg.ticks_per_beat, big, big, big, big])), g.i64("foff", offs))
    feat = g.op("ReduceSum", g.op("Gather", g.weight("feat_tables", np.concatenate(tables, 0)), fidx), g.i64("ax2", [2]),
                keepdims=0)  # [B,n,d]
    tok = g.op("Transpose", g.op("Gather", tok_t, "tokens", axis=1), perm=[1, 2, 0])  # [d,B,n] -> [B,n,d]
    return g.op("Add", tok, feat, name="x_emb"), tok_t


def _rope(g: _Builder, cfg: GraphConfig, pos: str) -> tuple[str, str]:
    """cos, sin rows at `pos`, shaped [..,3,1,2,D/2]: one Mul-Add rotates q (pre-scaled by
    1/sqrt(D)) and k and passes v through: out = x*cos + swap_halves(x)*sin."""
    cos, sin = rope_tables(cfg)
    c, d2 = cfg.context, cfg.head_dim // 2
    s = np.float32(1.0 / math.sqrt(cfg.head_dim))
    cos3 = np.stack([np.stack([cos, cos], 1) * s, np.stack([cos, cos], 1), np.ones((c, 2, d2), np.float32)], 1)
    sin3 = np.stack([np.stack([-sin, sin], 1) * s, np.stack([-sin, sin], 1), np.zeros((c, 2, d2), np.float32)], 1)
    return (g.op("Gather", g.const("rope_cos", cos3[:, :, None].astype(g.fdt)), pos),
            g.op("Gather", g.const("rope_sin", sin3[:, :, None].astype(g.fdt)), pos))


def _layer_norm(g: _Builder, x: str, key: str) -> str:
    """LayerNorm with the weights `key`.weight/.bias (ln1, ln2 of a block; ln_f)."""
    return g.op("LayerNormalization", x, g.weight(key + ".w", g.w(key + ".weight")), g.weight(key + ".b", g.w(key + ".bias")),
                axis=-1, epsilon=1e-5)


def _qkv(g: _Builder, cfg: GraphConfig, x: str, p: str, cos: str, sin: str, shape: str) -> str:
    """ln1 -> qkv projection reshaped to `shape` (..., 3, H, 2, D/2) -> rotary."""
    qkv = g.op("Reshape", g.op("MatMul", _layer_norm(g, x, p + "ln1"), g.weight(p + "qkv", g.w(p + "attn.qkv.weight").T)),
               shape)
    swapped = g.op("Gather", qkv, g.i64("swap", [1, 0]), axis=-2)
    return g.op("Add", g.op("Mul", qkv, cos), g.op("Mul", swapped, sin))


def _mlp(g: _Builder, x: str, p: str) -> str:
    h = g.op("Gelu", g.op("MatMul", _layer_norm(g, x, p + "ln2"), g.weight(p + "fc", g.w(p + "mlp.fc.weight").T)),
             approximate="tanh")
    return g.op("Add", x, g.op("MatMul", h, g.weight(p + "mlp_proj", g.w(p + "mlp.proj.weight").T)))


def _qkv_heads(g: _Builder, cfg: GraphConfig, x: str, p: str, cos: str, sin: str) -> list[str]:
    """q, k, v [B,1,H,n,D] of n tokens x [B,n,d] (rope rows cos/sin [n,3,1,2,D/2]): the chunk
    graph's and the classifier's layout."""
    H, D = cfg.n_head, cfg.head_dim
    qkv = _qkv(g, cfg, x, p, cos, sin, g.i64("qkv_chunk", [0, 0, 3, H, 2, D // 2]))
    qkv = g.op("Transpose", g.op("Reshape", qkv, g.i64("bn3hd", [0, 0, 3, H, D])), perm=[0, 2, 3, 1, 4])  # [B,3,H,n,D]
    return g.op("Split", qkv, axis=1, num_outputs=3, outs=3)


def _merge_heads(g: _Builder, cfg: GraphConfig, x: str, y: str, p: str) -> str:
    """x + proj(y): the heads' outputs y [B,1,H,n,D] back to [B,n,d], projected, added to the residual."""
    y = g.op("Transpose", y, perm=[0, 3, 1, 2, 4])  # [B,n,1,H,D]
    y = g.op("MatMul", g.op("Reshape", y, g.i64("bnd", [0, 0, cfg.d_model])), g.weight(p + "proj", g.w(p + "attn.proj.weight").T))
    return g.op("Add", x, y)


def _head(g: _Builder, cfg: GraphConfig, x: str, tok_t: str) -> None:
    logits = g.op("MatMul", g.op("Reshape", _layer_norm(g, x, "ln_f"), g.i64("bd", [-1, cfg.d_model])), tok_t)  # [B,V]
    if g.fdt != np.float32:
        logits = g.op("Cast", logits, to=g.tp.FLOAT)
    g.op("Identity", logits, name="logits")


def _flat_offsets(g: _Builder, cfg: GraphConfig, b1: str) -> tuple[str, str]:
    """Row offsets into the cache viewed as [L*2*B*H*C, D]: (2l+kv)*B*H*C as [1,2L,1,1],
    b*H*C as [B,1,1,1]; a row is their sum + h*C + position. Also b as [B] for the scatter."""
    hc = cfg.n_head * cfg.context
    b_idx = g.op("Range", g.i64("zero", 0), g.op("Squeeze", b1), g.i64("one", 1), name="b_idx")
    lk = g.op("Mul", g.i64("lk", np.arange(2 * cfg.n_layer).reshape(1, -1, 1, 1)), g.op("Mul", b1, g.i64("hc", [hc])))
    b_off = g.op("Mul", g.op("Reshape", b_idx, g.i64("b4", [-1, 1, 1, 1])), "hc")
    return g.op("Add", lk, b_off, name="lkb_off"), b_idx  # [B,2L,1,1]


def _scatter(g: _Builder, cfg: GraphConfig, kvs: list[str], b_idx: str, pos_col: str) -> None:
    """The one cache write: updates [B,2L,H,n,D] (k0,v0,k1,...) at (l, kv, b, h, pos)."""
    L, H = cfg.n_layer, cfg.n_head
    upd = g.op("Concat", *kvs, axis=1, name="kv_new") if len(kvs) > 1 else kvs[0]
    lkh = np.zeros((1, 2 * L, H, 1, 5), np.int64)
    lkh[..., 0] = (np.arange(2 * L) // 2)[:, None, None]
    lkh[..., 1] = (np.arange(2 * L) % 2)[:, None, None]
    lkh[..., 3] = np.arange(H)[:, None]
    b_part = g.op("Mul", g.op("Reshape", b_idx, g.i64("b5", [-1, 1, 1, 1, 1])), g.i64("e_b", [0, 0, 1, 0, 0]))
    p_part = g.op("Mul", pos_col, g.i64("e_p", [0, 0, 0, 0, 1]))  # [n,5]
    idx = g.op("Add", g.op("Add", g.i64("lkh_ix", lkh), b_part), p_part, name="kv_index")  # [B,2L,H,n,5]
    g.nodes.append(g.h.make_node("ScatterND", ["cache", idx, upd], ["cache_out"], name="cache_write"))


def _finish(g: _Builder, cfg: GraphConfig, kind: str, opset: int = OPSET):
    cache_dims = [cfg.n_layer, 2, "batch", cfg.n_head, cfg.context, cfg.head_dim]
    n = 1 if kind == "step" else "n"
    inputs = [("tokens", g.tp.INT64, ["batch", n]), ("feats", g.tp.INT64, ["batch", n, 5]), ("start", g.tp.INT64, []),
              ("cache", g.tdt, cache_dims)]
    outputs = [("logits", g.tp.FLOAT, ["batch", cfg.vocab_size]), ("cache_out", g.tdt, cache_dims)]
    return g.model(f"musebridge_{kind}", inputs, outputs, opset)


# --- the step graph: one new token per row --------------------------------------------------------
def _step(g: _Builder, cfg: GraphConfig, attention: str = "matmul"):
    if attention == "fused":
        return _step_fused(g, cfg)
    L, H, hl, d, D, C, W, S = (cfg.n_layer, cfg.n_head, cfg.local_heads, cfg.d_model, cfg.head_dim, cfg.context,
                               cfg.window, cfg.strided_rows)
    R = max(W - 1, S - 1)  # cache rows per head: local heads W-1, strided heads S-1 (both padded to R)
    rel = np.zeros((H, R), np.int64)
    real = np.zeros((H, R), bool)
    rel[:hl, : W - 1] = np.arange(W - 1) - (W - 1)
    rel[hl:, : S - 1] = -np.arange(1, S) * W
    real[:hl, : W - 1] = True
    real[hl:, : S - 1] = True
    b1 = g.op("Slice", g.op("Shape", "tokens"), g.i64("c0", [0]), g.i64("c1", [1]))
    rows = g.op("Add", "start", g.i64("rel", rel))  # [H,R]
    ok = g.op("And", g.op("GreaterOrEqual", rows, g.i64("zero", 0)), g.const("real", real))
    ok = g.op("Concat", ok, g.const("self_ok", np.ones((H, 1), bool)), axis=1)  # the new token is the last key
    bias = g.op("Reshape", g.op("Where", ok, g.const("f0", np.array(0, g.fdt)), g.const("ninf", np.array(-np.inf, g.fdt))),
                g.i64("h1r", [H, 1, R + 1]), name="bias")
    lkb, b_idx = _flat_offsets(g, cfg, b1)
    hrow = g.op("Add", g.i64("h_off", (np.arange(H) * C)[:, None]), g.op("Max", rows, "zero"))  # [H,R]
    flat = g.op("Reshape", "cache", g.i64("flat", [-1, D]), name="cache_flat")  # free: an alias of the input
    old = g.op("Gather", flat, g.op("Add", lkb, hrow), name="old_kv")  # [B,2L,H,R,D], every layer at once
    old = g.op("Split", old, axis=1, num_outputs=2 * L, outs=2 * L)  # [B,1,H,R,D] each
    cos, sin = _rope(g, cfg, "start")  # [3,1,2,D/2]
    x, tok_t = _embed(g, cfg)
    kvs = []
    for l in range(L):
        p = f"blocks.{l}."
        qkv = _qkv(g, cfg, x, p, cos, sin, g.i64("qkv_step", [-1, 3, H, 2, D // 2]))
        qkv = g.op("Reshape", qkv, g.i64("b3h1d", [-1, 3, H, 1, D]))
        q, k, v = g.op("Split", qkv, axis=1, num_outputs=3, outs=3)  # [B,1,H,1,D]
        kvs += [k, v]
        keys = g.op("Concat", old[2 * l], k, axis=3)  # [B,1,H,R+1,D]
        vals = g.op("Concat", old[2 * l + 1], v, axis=3)
        s = g.op("Add", g.op("MatMul", q, g.op("Transpose", keys, perm=[0, 1, 2, 4, 3])), bias)  # [B,1,H,1,R+1]
        y = g.op("Reshape", g.op("MatMul", g.op("Softmax", s, axis=-1), vals), g.i64("b1d", [-1, 1, d]))
        x = g.op("Add", x, g.op("MatMul", y, g.weight(p + "proj", g.w(p + "attn.proj.weight").T)))
        x = _mlp(g, x, p)
    _head(g, cfg, x, tok_t)
    _scatter(g, cfg, kvs, b_idx, g.op("Reshape", "start", g.i64("one1", [1, 1])))
    return _finish(g, cfg, "step")


def _step_fused(g: _Builder, cfg: GraphConfig):
    """The step graph with each layer's attention in ONNX's fused `Attention` op (opset 23), two
    calls per layer: local heads over their W keys, strided heads over their S keys. Each head group
    has its own Gather of exactly its rows (no padding of the strided heads' S-1 rows to W-1)."""
    L, H, hl, d, D, C, W, S = (cfg.n_layer, cfg.n_head, cfg.local_heads, cfg.d_model, cfg.head_dim, cfg.context,
                               cfg.window, cfg.strided_rows)
    hs = H - hl
    b1 = g.op("Slice", g.op("Shape", "tokens"), g.i64("c0", [0]), g.i64("c1", [1]))
    zero = g.i64("zero", 0)
    rows_l = g.op("Add", "start", g.i64("rel_l1", [np.arange(W - 1) - (W - 1)]))  # [1,W-1]
    rows_s = g.op("Sub", "start", g.i64("rel_s1", [np.arange(S - 1, 0, -1) * W]))  # [1,S-1], oldest first
    t1 = g.const("self_ok1", np.ones((1, 1), bool))  # the new token is the last key
    mask_l = g.op("Concat", g.op("GreaterOrEqual", rows_l, zero), t1, axis=1)  # [1,W]: Attention wants 2-4 dims
    mask_s = g.op("Concat", g.op("GreaterOrEqual", rows_s, zero), t1, axis=1)  # [1,S]
    f0, ninf = g.const("f0", np.array(0, g.fdt)), g.const("ninf", np.array(-np.inf, g.fdt))
    mask_l = g.op("Where", mask_l, f0, ninf, name="bias_local")
    mask_s = g.op("Where", mask_s, f0, ninf, name="bias_strided")
    lkb, b_idx = _flat_offsets(g, cfg, b1)  # [B,2L,1,1]
    flat = g.op("Reshape", "cache", g.i64("flat", [-1, D]), name="cache_flat")  # free: an alias of the input
    hrow_l = g.op("Add", g.i64("hl_off", (np.arange(hl) * C)[:, None]), g.op("Max", rows_l, zero))  # [hl,W-1]
    hrow_s = g.op("Add", g.i64("hs_off", (np.arange(hl, H) * C)[:, None]), g.op("Max", rows_s, zero))  # [hs,S-1]
    # indices [B,2L·h,R]: the Gather gives [B,2L·h,R,D] and its Split the [B,h,R,D] the fused op takes
    idx_l = g.op("Reshape", g.op("Add", lkb, hrow_l), g.i64("b_lhl", [-1, 2 * L * hl, W - 1]))
    idx_s = g.op("Reshape", g.op("Add", lkb, hrow_s), g.i64("b_lhs", [-1, 2 * L * hs, S - 1]))
    old_l = g.op("Split", g.op("Gather", flat, idx_l, name="old_local"), axis=1, num_outputs=2 * L, outs=2 * L)
    old_s = g.op("Split", g.op("Gather", flat, idx_s, name="old_strided"), axis=1, num_outputs=2 * L, outs=2 * L)
    cos, sin = _rope(g, cfg, "start")  # [3,1,2,D/2]
    x, tok_t = _embed(g, cfg)
    heads6 = g.i64("heads6", [hl, hs] * 3)
    kvs = []
    for l in range(L):
        p = f"blocks.{l}."
        qkv = _qkv(g, cfg, x, p, cos, sin, g.i64("qkv_step", [-1, 3, H, 2, D // 2]))
        qkv = g.op("Reshape", qkv, g.i64("b3h1d", [-1, 3 * H, 1, D]))
        q_l, q_s, k_l, k_s, v_l, v_s = g.op("Split", qkv, heads6, axis=1, outs=6)  # [B,h,1,D]
        kvs += [k_l, k_s, v_l, v_s]
        # past = the gathered rows, (k, v) = the new token's: the op attends over [past, new] under the mask
        # (q comes pre-scaled by 1/sqrt(D)); its present_key/value outputs are needed by ORT, unused here
        y_l = g.op("Attention", q_l, k_l, v_l, mask_l, old_l[2 * l], old_l[2 * l + 1], scale=1.0, outs=3,
                   name=f"attn_local_{l}")[0]  # [B,hl,1,D]
        y_s = g.op("Attention", q_s, k_s, v_s, mask_s, old_s[2 * l], old_s[2 * l + 1], scale=1.0, outs=3,
                   name=f"attn_strided_{l}")[0]  # [B,hs,1,D]
        y = g.op("Reshape", g.op("Concat", y_l, y_s, axis=1), g.i64("b1d", [-1, 1, d]))
        x = g.op("Add", x, g.op("MatMul", y, g.weight(p + "proj", g.w(p + "attn.proj.weight").T)))
        x = _mlp(g, x, p)
    _head(g, cfg, x, tok_t)
    kv = g.op("Reshape", g.op("Concat", *kvs, axis=1), g.i64("b2lh1d", [-1, 2 * L, H, 1, D]), name="kv_new")
    _scatter(g, cfg, [kv], b_idx, g.op("Reshape", "start", g.i64("one1", [1, 1])))
    return _finish(g, cfg, "step", opset=FUSED_OPSET)


# --- the chunk graph: n >= 1 new tokens per row ---------------------------------------------------
def _chunk(g: _Builder, cfg: GraphConfig):
    L, H, hl, D, C, W, S = (cfg.n_layer, cfg.n_head, cfg.local_heads, cfg.head_dim, cfg.context, cfg.window,
                            cfg.strided_rows)
    hs = H - hl
    shp = g.op("Shape", "tokens")
    b1 = g.op("Slice", shp, g.i64("c0", [0]), g.i64("c1", [1]))
    n1 = g.op("Slice", shp, "c1", g.i64("c2", [2]))
    zero, one = g.i64("zero", 0), g.i64("one", 1)
    i = g.op("Range", zero, g.op("Squeeze", n1), one, name="i")  # [n]
    pos = g.op("Add", "start", i, name="pos")
    pos_col = g.op("Unsqueeze", pos, g.i64("ax_m1", [-1]))  # [n,1]
    diff = g.op("Sub", g.op("Unsqueeze", i, "ax_m1"), g.op("Unsqueeze", i, g.i64("ax0", [0])))  # [n,n]: query - key
    causal = g.op("GreaterOrEqual", diff, zero)
    f0, ninf = g.const("f0", np.array(0, g.fdt)), g.const("ninf", np.array(-np.inf, g.fdt))
    # local heads: keys = the W-1 cache rows before `start`, then the n new ones
    rows_l = g.op("Add", "start", g.i64("rel_l", np.arange(W - 1) - (W - 1)))  # [W-1]
    in_window = g.op("GreaterOrEqual", rows_l, g.op("Sub", pos_col, g.i64("wm1", W - 1)))  # [n,W-1]
    ok_l = g.op("And", g.op("GreaterOrEqual", rows_l, zero), in_window)
    new_l = g.op("And", causal, g.op("Less", diff, g.i64("W", W)))
    bias_l = g.op("Where", g.op("Concat", ok_l, new_l, axis=1), f0, ninf, name="bias_local")  # [n,W-1+n]
    # strided heads: per query the S-1 rows at stride W before it that lie in the cache, then the new ones
    rows_s = g.op("Sub", pos_col, g.i64("rel_s", np.arange(1, S) * W))  # [n,S-1]
    ok_s = g.op("And", g.op("GreaterOrEqual", rows_s, zero), g.op("Less", rows_s, "start"))
    new_s = g.op("And", causal, g.op("Equal", g.op("Mod", diff, "W"), zero))
    bias_s = g.op("Unsqueeze", g.op("Where", g.op("Concat", ok_s, new_s, axis=1), f0, ninf), g.i64("ax1", [1]),
                  name="bias_strided")  # [n,1,S-1+n]
    lkb, b_idx = _flat_offsets(g, cfg, b1)  # [B,2L,1,1]
    flat = g.op("Reshape", "cache", g.i64("flat", [-1, D]), name="cache_flat")  # free: an alias of the input
    hrow_l = g.op("Add", g.i64("hl_off", (np.arange(hl) * C)[:, None]), g.op("Max", rows_l, zero))  # [hl,W-1]
    old_l = g.op("Split", g.op("Gather", flat, g.op("Add", lkb, hrow_l)), axis=1, num_outputs=2 * L, outs=2 * L)
    hrow_s = g.op("Add", g.i64("hs_off", (np.arange(hl, H) * C)[:, None, None]), g.op("Max", rows_s, zero))  # [hs,n,S-1]
    lkb5 = g.op("Unsqueeze", lkb, g.i64("ax4", [4]))
    old_s = g.op("Split", g.op("Gather", flat, g.op("Add", lkb5, hrow_s)), axis=1, num_outputs=2 * L, outs=2 * L)
    # old_l[2l+kv] [B,1,hl,W-1,D]; old_s[2l+kv] [B,1,hs,n,S-1,D]
    cos, sin = _rope(g, cfg, pos)  # [n,3,1,2,D/2]
    x, tok_t = _embed(g, cfg)
    heads = g.i64("heads", [hl, hs])
    kvs = []
    for l in range(L):
        p = f"blocks.{l}."
        q, k, v = _qkv_heads(g, cfg, x, p, cos, sin)
        kvs += [k, v]
        (q_l, q_s), (k_l, k_s), (v_l, v_s) = (g.op("Split", t, heads, axis=2, outs=2) for t in (q, k, v))
        keys = g.op("Concat", old_l[2 * l], k_l, axis=3)  # [B,1,hl,W-1+n,D]
        vals = g.op("Concat", old_l[2 * l + 1], v_l, axis=3)
        s = g.op("Add", g.op("MatMul", q_l, g.op("Transpose", keys, perm=[0, 1, 2, 4, 3])), bias_l)
        y_l = g.op("MatMul", g.op("Softmax", s, axis=-1), vals)  # [B,1,hl,n,D]
        q6 = g.op("Unsqueeze", q_s, "ax4")  # [B,1,hs,n,1,D]
        s_old = g.op("MatMul", q6, g.op("Transpose", old_s[2 * l], perm=[0, 1, 2, 3, 5, 4]))  # [B,1,hs,n,1,S-1]
        s_new = g.op("Unsqueeze", g.op("MatMul", q_s, g.op("Transpose", k_s, perm=[0, 1, 2, 4, 3])), "ax4")  # [..,n,1,n]
        p_s = g.op("Softmax", g.op("Add", g.op("Concat", s_old, s_new, axis=-1), bias_s), axis=-1)
        p_old, p_new = g.op("Split", p_s, g.op("Concat", g.i64("sm1", [S - 1]), n1, axis=0), axis=-1, outs=2)
        y_new = g.op("MatMul", p_new, g.op("Unsqueeze", v_s, g.i64("ax3", [3])))  # [B,1,hs,n,1,D]
        y_s = g.op("Add", g.op("MatMul", p_old, old_s[2 * l + 1]), y_new)
        y_s = g.op("Reshape", y_s, g.i64("b1hnd", [0, 1, hs, -1, D]))  # [B,1,hs,n,D]
        x = _merge_heads(g, cfg, x, g.op("Concat", y_l, y_s, axis=2), p)
        if l == L - 1:  # only the last position feeds the logits
            x = g.op("Slice", x, g.i64("last", [-1]), g.i64("end", [np.iinfo(np.int64).max]), "c1")
        x = _mlp(g, x, p)
    _head(g, cfg, x, tok_t)
    _scatter(g, cfg, kvs, b_idx, pos_col)
    return _finish(g, cfg, "chunk")


def build_graph(cfg: GraphConfig, weights: dict[str, np.ndarray], kind: str = "chunk", compute: str = "fp32",
                attention: str = "matmul"):
    """The onnx.ModelProto of one graph.

    `weights`: the safetensors state as numpy (fp16 or fp32; the head is tied to `tok`).
    `kind`: "step" (n = 1) or "chunk" (any n). `compute`: "fp32" (fp16 weights stay fp16 on
    disk behind a Cast) or "fp16" (fp16 math and cache, for GPUs; logits stay float32).
    `attention`: the step graph's spelling, "matmul" or "fused" (module doc; the chunk graph
    ignores it). build.py picks the default per dtype.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
    g = _Builder(weights, compute)
    return _step(g, cfg, attention) if kind == "step" else _chunk(g, cfg)
