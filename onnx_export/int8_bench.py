"""int8 quantization schemes against the fp32 graphs: logits and step speed, side by side in one process.

    python -m musebridge.onnx_export.int8_bench [--model DIR] [--tiny] [--schemes s8,s8-7bit,...]
        [--context 1024] [--steps 300] [--threads 1] [--json out.json]

Why: ONNX Runtime's dynamic-quantized MatMul multiplies u8 activations by the weights. With s8
weights on a CPU without AVX-512 VNNI / AVX-VNNI, MLAS's AVX2 kernel sums u8·s8 pairs with
`vpmaddubsw`, which saturates at int16: logits came out 3.3 off on an AVX2 EPYC where a VNNI
machine saw 0.13. The schemes here are quantize_dynamic's options (`build._quantize`); each is
built from the same fp32 graph, driven through the same prompt as the fp32 graphs
(`parity.compare`: prefill, appends, steps on the fp32 runtime's argmax) and timed at one
context, the variants alternating in blocks so the machine's noise hits all alike.

`--tiny`: also the random 2-layer model of tests/test_onnx.py (needs torch to make it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .build import _quantize, build_models, model_folder, write_graphs
from .parity import check_prompt, compare

SCHEMES = {
    "s8": {"weight_type": "QInt8"},  # the builder's choice before BUILDER_VERSION 3
    "s8-7bit": {"weight_type": "QInt8", "reduce_range": True},
    "s8-per-channel": {"weight_type": "QInt8", "per_channel": True},
    "s8-per-channel-7bit": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "u8": {"weight_type": "QUInt8"},
    "u8-per-channel": {"weight_type": "QUInt8", "per_channel": True},
}


def tiny_model(folder: Path) -> Path:
    """The test suite's tiny model (tests/test_onnx.py `tiny`), fp16 weights as models ship."""
    import torch

    from musebridge.engine.training.checkpoint import save_model
    from musebridge.engine.training.model import ModelConfig, MuseModel
    from musebridge.engine.music.vocab import Vocabulary

    vocab = Vocabulary()
    torch.manual_seed(0)
    model = MuseModel(ModelConfig(vocab_size=len(vocab), n_layer=2, n_head=4, d_model=64, window=16, context=512))
    with torch.no_grad():
        model.tok.weight.mul_(5.0)
        model.tok.weight[vocab.note_token_mask(offs=False)] += 0.5
    save_model(folder, model, vocab, half=True)
    return folder


def _runtimes(folder, out: Path, threads: int, schemes) -> dict:
    from musebridge.engine.training.checkpoint import load_vocab
    from musebridge.engine.decode.ort_runtime import OrtRuntime, load_graphs

    vocab = load_vocab(model_folder(folder))
    rts = {"fp32": OrtRuntime(load_graphs(write_graphs(folder, out / "fp32", "fp32"), threads, "cpu"), vocab)}
    models = build_models(folder, "int8")
    for name in schemes:
        paths = {}
        for kind, model in models.items():
            paths[kind] = out / name / f"{kind}-int8.onnx"
            paths[kind].parent.mkdir(parents=True, exist_ok=True)
            _quantize(model, str(paths[kind]), SCHEMES[name])
        rts[name] = OrtRuntime(load_graphs(paths, threads, "cpu"), vocab)
    return rts


def _time_steps(rts: dict, context: int, steps: int, block: int = 20, skip: int = 5) -> dict[str, float]:
    """p50 ms of a decode step at `context` for each runtime, alternating blocks."""
    tok, feats = np.array([[5]], np.int64), np.zeros((1, 1, 5), np.int64)
    ms = {k: [] for k in rts}
    for rt in rts.values():
        rt.cache_host[...] = np.random.default_rng(0).standard_normal(rt.cache_host.shape, np.float32)
    for _ in range(-(-steps // block)):
        for k, rt in rts.items():
            start = min(context, rt.context) - 1
            for i in range(skip + block):
                t0 = time.perf_counter()
                rt._run(tok, feats, start)
                if i >= skip:
                    ms[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.percentile(v, 50)) for k, v in ms.items()}


def measure(folder=None, schemes=tuple(SCHEMES), context: int = 1024, steps: int = 300, threads: int = 1,
            prompt: int = 1024, decode: int = 32, label: str | None = None) -> list[dict]:
    """One row per scheme: `compare` against the fp32 graphs and the step's p50 beside fp32's
    (`label`: the model's name in the rows, default its folder)."""
    pieces = (37, 5, 1, 2, 64)
    with tempfile.TemporaryDirectory() as tmp:
        rts = _runtimes(folder, Path(tmp), threads, schemes)
        ref = rts["fp32"]
        n = max(1, min(prompt, ref.context - sum(pieces) - decode - 1))
        toks = check_prompt(ref.vocab, n + sum(pieces))
        rows = []
        for name in schemes:
            ref.reset()
            row = {"model": label or str(model_folder(folder)), "scheme": name, **SCHEMES[name],
                   **compare(ref, rts[name], toks, n, pieces, decode)}
            rows.append(row)
        speed = _time_steps(rts, context, steps)
    for row in rows:
        row.update({"context": context, "threads": threads, "step_ms": round(speed[row["scheme"]], 4),
                    "fp32_step_ms": round(speed["fp32"], 4)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | scheme | max \\|Δlogits\\| | ÷ logit range | max KL (nats) | top-1 | step ms (fp32) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {Path(r['model']).name} | {r['scheme']} | {r['max']:.3f} | {r['rel']:.4f} | {r['kl']:.2e} | "
              f"{r['top1']:.0%} | {r['step_ms']:.3f} ({r['fp32_step_ms']:.3f}) |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--tiny", action="store_true", help="also the test suite's tiny model (needs torch)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    schemes = a.schemes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.tiny:
            rows += measure(tiny_model(Path(tmp) / "tiny"), schemes, a.context, a.steps, a.threads, label="tiny")
        rows += measure(a.model, schemes, a.context, a.steps, a.threads)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
