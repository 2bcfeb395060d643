"""Decode step, fused `Attention` vs MatMul/Softmax spelling, side by side in one process.

    python -m musebridge.onnx_export.attention_bench [--model DIR] [--contexts 256,1024,4096]
        [--threads 1,2] [--steps 300] [--json out.json]

Both step graphs are built from the same weights into a temporary folder and opened with
the app's session options; each keeps its own in-place cache (random rows: a step costs
the same whatever they hold). The variants alternate in blocks, A B A B ..., so the machine's
noise hits both alike: each block runs `skip` unrecorded steps (the other session's idle
ORT workers spin for a while and, at 2 threads on 2 cores, would be timed too), then `block`
recorded ones. p50/p99 in ms per step (the logits copy included, as in `OrtRuntime.step`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .build import model_folder, read_weights
from .graph import ATTENTIONS, build_graph


def _runtimes(folder, out: Path, threads: int, variants) -> dict:
    import onnx

    from musebridge.engine.training.checkpoint import load_vocab
    from musebridge.engine.decode.ort_runtime import OrtRuntime, load_graphs

    cfg, weights = read_weights(folder)
    vocab = load_vocab(model_folder(folder))
    chunk = out / "chunk.onnx"
    if not chunk.exists():
        onnx.save_model(build_graph(cfg, weights, "chunk"), str(chunk))
    rts = {}
    for v in variants:
        step = out / f"step-{v}.onnx"
        if not step.exists():
            onnx.save_model(build_graph(cfg, weights, "step", attention=v), str(step))
        rts[v] = OrtRuntime(load_graphs({"step": step, "chunk": chunk}, threads, "cpu"), vocab)
        rts[v].cache_host[...] = np.random.default_rng(0).standard_normal(rts[v].cache_host.shape, np.float32)
    return rts


def measure(folder=None, contexts=(256, 1024, 4096), threads=(1, 2), steps: int = 300, block: int = 20,
            skip: int = 5, variants=ATTENTIONS) -> list[dict]:
    rows = []
    tok = np.array([[5]], np.int64)
    feats = np.zeros((1, 1, 5), np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        for th in threads:
            rts = _runtimes(folder, Path(tmp), th, variants)
            for ctx in contexts:
                start = min(ctx, rts[variants[0]].context) - 1  # the step that fills position ctx-1
                a, b = (rts[v]._run(tok, feats, start) for v in variants[:2])
                worst = float(np.abs(a - b).max())
                ms = {v: [] for v in variants}
                for _ in range(-(-steps // block)):
                    for v in variants:
                        for i in range(skip + block):
                            t0 = time.perf_counter()
                            rts[v]._run(tok, feats, start)
                            if i >= skip:
                                ms[v].append((time.perf_counter() - t0) * 1e3)
                for v in variants:
                    rows.append({"attention": v, "threads": th, "context": ctx, "steps": len(ms[v]),
                                 "p50_ms": round(float(np.percentile(ms[v], 50)), 4),
                                 "p99_ms": round(float(np.percentile(ms[v], 99)), 4), "max_dlogits": worst})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| threads | context | attention | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {r['context']} | {r['attention']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--contexts", default="256,1024,4096")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", default=",".join(ATTENTIONS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = measure(a.model, [int(c) for c in a.contexts.split(",")], [int(t) for t in a.threads.split(",")], a.steps,
                   variants=a.variants.split(","))
    print(table(rows))
    print(f"max |Δlogits| between variants: {max(r['max_dlogits'] for r in rows):.2e}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
