"""Exported graphs against PyTorch on a real prompt: max |Δlogits| per kind of call.

Both runtimes get exactly the same tokens through the `CachedRuntime` interface: a
prompt prefilled in 512-token chunks, appends of uneven sizes, then single steps (the
next token is the PyTorch runtime's argmax, fed to both). The prompt is
docs/examples/phrase.mid played again and again, long enough that the strided heads
read many rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Bounds on `compare`'s result per dtype. fp32 and fp16 are the same math as PyTorch's: max |Δlogits|.
# int8 rounds every weight, so it is held to what a correct 8-bit quantization meets on any CPU
# (docs/PERFORMANCE.md "int8": the u8 graphs measured 0.011-0.013 of the logit range, KL <= 5.4e-4,
# 7-bit s8 0.019-0.021 and <= 2.1e-3; the saturating s8 graphs of an AVX2 CPU without VNNI 0.057-0.24):
# the worst |Δlogits| over each call's logit range ("rel"), the worst KL(fp32 || int8) of the
# next-token distribution in nats ("kl"), and the share of calls whose likeliest token agrees ("top1").
TARGETS = {"fp32": {"max": 1e-4}, "fp16": {"max": 1e-2}, "int8": {"rel": 0.03, "kl": 5e-3, "top1": 0.9}}
AT_LEAST = ("top1",)  # bounds from below; every other one bounds from above
PHRASE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "phrase.mid"


def check_prompt(vocab, length: int) -> list[int]:
    """`length` tokens of a real phrase repeated end to end (a made-up chord run if the file is absent)."""
    from musebridge.engine.music.events import Note, Piece
    from musebridge.engine.decode.generate import prompt_tokens

    if PHRASE.is_file():
        from musebridge.engine.music.midi_file import read_midi

        phrase = read_midi(PHRASE)
    else:
        phrase = Piece(notes=[Note(i * 0.5, 0.5, 60 + (i * 7) % 12, 80, "piano") for i in range(16)])
    span = max(phrase.end, 1.0)
    notes, copies = [], 0
    while True:
        notes += [Note(n.start + copies * span, n.duration, n.pitch, n.velocity, n.family) for n in phrase.notes]
        copies += 1
        toks = prompt_tokens(Piece(notes=list(notes), tempos=phrase.tempos, time_signatures=phrase.time_signatures),
                             vocab, None, sorted({n.family for n in notes}))
        if len(toks) >= length:
            return toks[:length]


def logit_gap(want: np.ndarray, got: np.ndarray) -> dict:
    """How far `got` [B,V] logits are from `want`: max |Δ|, that over the row's logit range (worst
    row), the next-token distribution's KL(want || got) in nats (worst row), top-1 agreement (mean)."""
    a, b = want.astype(np.float64), got.astype(np.float64)
    la = a - a.max(-1, keepdims=True)
    lb = b - b.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(-1)
    dmax = np.abs(a - b).max(-1)
    return {"max": float(dmax.max()), "rel": float((dmax / np.maximum(np.ptp(a, -1), 1e-12)).max()),
            "kl": float(max(kl.max(), 0.0)), "top1": float((a.argmax(-1) == b.argmax(-1)).mean())}


def compare(ref, rt, toks: list[int], prompt: int, pieces=(37, 5, 1, 2, 64), steps: int = 32) -> dict:
    """Drive two runtimes alike: prefill `toks[:prompt]`, append `pieces`, then `steps` single steps
    (each the reference's argmax, fed to both). Per kind of call the worst `logit_gap`, plus over
    all calls: worst max/rel/kl and mean top-1."""
    gaps = {"prefill": [logit_gap(a := ref.prefill(toks[:prompt]), rt.prefill(toks[:prompt]))]}
    at = prompt
    gaps["append"] = []
    for n in pieces:
        a = ref.append(toks[at : at + n])
        gaps["append"].append(logit_gap(a, rt.append(toks[at : at + n])))
        at += n
    gaps["step"] = []
    for _ in range(steps):
        tok = int(a[0].argmax())
        a = ref.step(tok)
        gaps["step"].append(logit_gap(a, rt.step(tok)))
    every = [g for kind in gaps.values() for g in kind]
    out = {kind: max(g["max"] for g in kind_gaps) for kind, kind_gaps in gaps.items()}
    out.update({"max": max(g["max"] for g in every), "rel": max(g["rel"] for g in every),
                "kl": max(g["kl"] for g in every), "top1": float(np.mean([g["top1"] for g in every])),
                "calls": len(every), "positions": ref.position})
    return out


def misses(result: dict, target: dict) -> list[str]:
    """The bounds of `target` (see TARGETS) that `result` (from `compare`) misses, as 'name value (bound)'."""
    bad = []
    for name, bound in target.items():
        got = result[name]
        ok = got >= bound if name in AT_LEAST else got <= bound
        if not ok:
            bad.append(f"{name} {got:.3g} ({'at least' if name in AT_LEAST else 'at most'} {bound:g})")
    return bad


def parity_check(model_dir=None, onnx_dir=None, dtype: str = "fp32", prompt: int = 1024, steps: int = 32) -> dict:
    """`compare` of PyTorch and ONNX Runtime on a real prompt, with `target` (TARGETS[dtype]) and `misses`.

    `onnx_dir`: exported graphs (default: the cached build). The prompt is cut to fit the
    model's context with room for the appends and steps.
    """
    from musebridge.engine.decode.backends import open_runtime

    ref = open_runtime(model_dir, "torch")
    ort = open_runtime(model_dir, "onnxruntime", dtype=dtype, onnx_dir=onnx_dir)
    pieces = (37, 5, 1, 2, 64)
    prompt = max(1, min(prompt, ref.context - sum(pieces) - steps - 1))
    out = {"dtype": dtype, "prompt_tokens": prompt}
    out.update(compare(ref, ort, check_prompt(ref.vocab, prompt + sum(pieces)), prompt, pieces, steps))
    out["target"] = TARGETS[dtype]
    out["misses"] = misses(out, TARGETS[dtype])
    return out
