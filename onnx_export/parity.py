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

TARGETS = {"fp32": 1e-4, "fp16": 1e-2, "int8": None}  # int8 is reported, not held to a bound
PHRASE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "phrase.mid"


def check_prompt(vocab, length: int) -> list[int]:
    """`length` tokens of a real phrase repeated end to end (a made-up chord run if the file is absent)."""
    from musebridge.engine.events import Note, Piece
    from musebridge.engine.generate import prompt_tokens

    if PHRASE.is_file():
        from musebridge.engine.midi_file import read_midi

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


def parity_check(model_dir=None, onnx_dir=None, dtype: str = "fp32", prompt: int = 1024, steps: int = 32) -> dict:
    """Max |Δlogits| between PyTorch and ONNX Runtime for prefill, append and step calls.

    `onnx_dir`: exported graphs (default: the cached build). The prompt is cut to fit the
    model's context with room for the appends and steps.
    """
    from musebridge.engine.backends import open_runtime

    ref = open_runtime(model_dir, "torch")
    ort = open_runtime(model_dir, "onnxruntime", dtype=dtype, onnx_dir=onnx_dir)
    pieces = [37, 5, 1, 2, 64]
    prompt = max(1, min(prompt, ref.context - sum(pieces) - steps - 1))
    toks = check_prompt(ref.vocab, prompt + sum(pieces))
    out = {"dtype": dtype, "prompt_tokens": prompt}

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.float64) - b).max())

    a, b = ref.prefill(toks[:prompt]), ort.prefill(toks[:prompt])
    out["prefill"] = diff(a, b)
    at, worst = prompt, 0.0
    for n in pieces:
        a, b = ref.append(toks[at : at + n]), ort.append(toks[at : at + n])
        worst, at = max(worst, diff(a, b)), at + n
    out["append"] = worst
    worst, agree = 0.0, 0
    for _ in range(steps):
        tok = int(a[0].argmax())
        agree += tok == int(b[0].argmax())
        a, b = ref.step(tok), ort.step(tok)
        worst = max(worst, diff(a, b))
    out["step"] = worst
    out["argmax_agree"] = agree / max(steps, 1)
    out["positions"] = ref.position
    out["max"] = max(out["prefill"], out["append"], out["step"])
    out["target"] = TARGETS.get(dtype)
    return out
