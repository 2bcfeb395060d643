"""The MuseBridge transformer: a small MuseNet-style decoder with sparse attention.

As small and readable as nanoGPT. Attention follows the Sparse Transformer (Child et
al. 2019) with the two patterns split across the heads of every layer: *local* heads
see the last `window` tokens, *strided* heads see every `window`-th token back to the
start. A full sequence uses the blocked form (cost O(T·window + T²/window)); a cached
step gathers exactly the rows its pattern needs with fixed-size indices, so a step at
context 4096 costs about what it costs at 256. `forward_dense` is the same model with
plain masked attention: the reference the tests hold the fast paths to.

Token embeddings get MuseNet's extra embeddings added (see `features.py`): time
(sub-beat phase and beat), index within the chord, part of the piece and countdown.
Positions are rotary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..music.features import BEAT_CYCLE, MAX_CHORD, N_PARTS
from .model_config import CONFIGS, ModelConfig

__all__ = ["CONFIGS", "KVCache", "ModelConfig", "MuseModel"]


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary angles, [context, head_dim/2]."""
    half = cfg.head_dim // 2
    inv = 1.0 / (cfg.rope_base ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    ang = torch.arange(cfg.context, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim; cos/sin [T, D/2]."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def local_mask(t: int, window: int, device=None) -> torch.Tensor:
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    return (j <= i) & (i - j < window)


def strided_mask(t: int, window: int, device=None) -> torch.Tensor:
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    return (j <= i) & ((i - j) % window == 0)


class SparseSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        h, d = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.qkv(x).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)  # each [B,H,T,D]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, self.cfg.d_model)))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Whole sequence from position 0, blocked sparse form. Returns (y, k, v)."""
        q, k, v = self._qkv(x, cos, sin)
        b, h, t, d = q.shape
        w, hl = self.cfg.window, self.cfg.local_heads
        pad = (-t) % w
        if pad:  # padding at the end never reaches earlier queries (causal)
            q, kp, vp = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        else:
            kp, vp = k, v
        nb = (t + pad) // w
        # local heads: each block of queries against the previous block and itself
        ql = q[:, :hl].reshape(b, hl, nb, w, d)
        kl = kp[:, :hl].reshape(b, hl, nb, w, d)
        vl = vp[:, :hl].reshape(b, hl, nb, w, d)
        kl = torch.cat([F.pad(kl, (0, 0, 0, 0, 1, 0))[:, :, :-1], kl], dim=3)
        vl = torch.cat([F.pad(vl, (0, 0, 0, 0, 1, 0))[:, :, :-1], vl], dim=3)
        i = torch.arange(w, device=x.device)[:, None]
        j = torch.arange(2 * w, device=x.device)[None, :]
        m = (j > i) & (j <= i + w)
        mask = m.expand(nb, w, 2 * w).clone()
        mask[0, :, :w] = False  # block 0 has no previous block
        yl = F.scaled_dot_product_attention(ql, kl, vl, attn_mask=mask, dropout_p=self._p())
        yl = yl.reshape(b, hl, nb * w, d)
        # strided heads: attend along the block axis, one phase at a time
        hs = h - hl
        qs = q[:, hl:].reshape(b, hs, nb, w, d).transpose(2, 3)
        ks = kp[:, hl:].reshape(b, hs, nb, w, d).transpose(2, 3)
        vs = vp[:, hl:].reshape(b, hs, nb, w, d).transpose(2, 3)
        ys = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, dropout_p=self._p())
        ys = ys.transpose(2, 3).reshape(b, hs, nb * w, d)
        y = torch.cat([yl, ys], dim=1)[:, :, :t]
        return self._out(y), k, v

    def forward_dense(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Reference: full attention with the sparse pattern as a boolean mask."""
        q, k, v = self._qkv(x, cos, sin)
        t, hl = x.shape[1], self.cfg.local_heads
        mask = torch.cat([
            local_mask(t, self.cfg.window, x.device).expand(hl, t, t),
            strided_mask(t, self.cfg.window, x.device).expand(self.cfg.n_head - hl, t, t),
        ])
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def forward_cached(self, x, cos, sin, k_cache, v_cache, pos: torch.Tensor) -> torch.Tensor:
        """New tokens at positions `pos` [n] (contiguous): write their keys and values into
        the caches [B,H,C,D] in place, then attend through fixed-size gathers."""
        q, k, v = self._qkv(x, cos, sin)
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v)
        w, hl, s = self.cfg.window, self.cfg.local_heads, self.cfg.strided_rows
        li = pos[:, None] - (w - 1) + torch.arange(w, device=pos.device)[None, :]  # [n, w]
        si = pos[:, None] - torch.arange(s, device=pos.device)[None, :] * w  # [n, s]
        yl = _gather_attend(q[:, :hl], k_cache[:, :hl], v_cache[:, :hl], li)
        ys = _gather_attend(q[:, hl:], k_cache[:, hl:], v_cache[:, hl:], si)
        return self._out(torch.cat([yl, ys], dim=1))

    def _p(self) -> float:
        return self.cfg.dropout if self.training else 0.0


def _gather_attend(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """q [B,H,n,D] attends cache rows idx [n,R] (negative = before the start: masked)."""
    valid = idx >= 0
    rows = idx.clamp(min=0)
    kg = kc[:, :, rows]  # [B,H,n,R,D]
    vg = vc[:, :, rows]
    y = F.scaled_dot_product_attention(q.unsqueeze(3), kg, vg, attn_mask=valid[:, None, :])
    return y.squeeze(3)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SparseSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)


class MuseModel(nn.Module):
    """Token + feature embeddings, sparse blocks, tied output head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.phase = nn.Embedding(cfg.ticks_per_beat, d)
        self.beat = nn.Embedding(BEAT_CYCLE, d)
        self.chord = nn.Embedding(MAX_CHORD, d)
        self.part = nn.Embedding(N_PARTS + 1, d)
        self.countdown = nn.Embedding(N_PARTS + 1, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """tokens [B,T], feats [B,T,5] (phase, beat, chord, part, countdown)."""
        f = feats
        x = self.tok(tokens) + self.phase(f[..., 0] % self.cfg.ticks_per_beat) + self.beat(f[..., 1])
        x = x + self.chord(f[..., 2]) + self.part(f[..., 3]) + self.countdown(f[..., 4])
        return self.drop(x)

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor, dense: bool = False,
                mix: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
        """Logits [B,T,V] for a sequence starting at position 0.

        `mix` = (tokens2, feats2, lam) is MuseNet's embedding mixup: the blocks see
        lam·emb(a) + (1-lam)·emb(b). It goes through `forward`, never a method of its own,
        so a DistributedDataParallel wrapper sees (and averages) the mixed pass too."""
        x = self.embed(tokens, feats)
        if mix is not None:
            tokens2, feats2, lam = mix
            x = lam * x + (1 - lam) * self.embed(tokens2, feats2)
        return self.head(self._blocks(x, dense))

    def hidden(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B,T,d] (the trunk the critic and style classifier use)."""
        return self._blocks(self.embed(tokens, feats))

    def _blocks(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        t = x.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence of {t} tokens exceeds the context of {self.cfg.context}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk in self.blocks:
            h = blk.ln1(x)
            x = x + (blk.attn.forward_dense(h, cos, sin) if dense else blk.attn(h, cos, sin)[0])
            x = x + blk.mlp(blk.ln2(x))
        return self.ln_f(x)

    def forward_cached(self, tokens: torch.Tensor, feats: torch.Tensor, cache: "KVCache", start: int) -> torch.Tensor:
        """Logits for new tokens at positions start.. (the cache holds everything before)."""
        n = tokens.shape[1]
        if start + n > self.cfg.context:
            raise ValueError(f"positions up to {start + n} exceed the context of {self.cfg.context}")
        return self.forward_at(tokens, feats, cache, torch.arange(start, start + n, device=tokens.device))

    def forward_at(self, tokens: torch.Tensor, feats: torch.Tensor, cache: "KVCache", pos: torch.Tensor) -> torch.Tensor:
        """`forward_cached` with the positions as a tensor [n] (contiguous, in range): no
        Python number reaches a kernel, so one CUDA graph captured at any position replays
        at every other (the caller checks the range)."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        x = self.embed(tokens, feats)
        for i, blk in enumerate(self.blocks):
            h = blk.ln1(x)
            x = x + blk.attn.forward_cached(h, cos, sin, cache.k[i], cache.v[i], pos)
            x = x + blk.mlp(blk.ln2(x))
        return self.head(self.ln_f(x))

    def prefill_into(self, tokens: torch.Tensor, feats: torch.Tensor, cache: "KVCache") -> torch.Tensor:
        """Whole prompt from position 0 with the blocked sparse form, keys written to the cache."""
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(tokens, feats)
        for i, blk in enumerate(self.blocks):
            y, k, v = blk.attn(blk.ln1(x), cos, sin)
            cache.k[i][:, :, :t] = k
            cache.v[i][:, :, :t] = v
            x = x + y
            x = x + blk.mlp(blk.ln2(x))
        return self.head(self.ln_f(x))


class KVCache:
    """Static keys and values for the whole context, allocated once: [L][B,H,C,D]."""

    def __init__(self, cfg: ModelConfig, batch: int = 1, dtype=torch.float32, device=None):
        shape = (batch, cfg.n_head, cfg.context, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def repeat(self, n: int, upto: int) -> "KVCache":
        """A cache of batch n·B whose first `upto` rows copy this one's (for fork)."""
        new = object.__new__(KVCache)
        new.k, new.v = [], []
        for src, dst in ((self.k, new.k), (self.v, new.v)):
            for t in src:
                c = torch.zeros((t.shape[0] * n, *t.shape[1:]), dtype=t.dtype, device=t.device)
                c[:, :, :upto] = t[:, :, :upto].repeat_interleave(n, dim=0)
                dst.append(c)
        return new
