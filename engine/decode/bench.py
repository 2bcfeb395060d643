"""`musebridge bench`: our runtimes against what a user would otherwise pick, side by side.

Each backend runs in its own child process (so peak RSS is its own, and the ONNX
Runtime path never has torch loaded), one after another on the same machine in one
run; the floor is measured in the same run. Absolute times on a shared machine move by
tens of percent between runs, so read the ratios.

Backends: our `onnxruntime`, `torch` (our model, static cache), on a GPU `torch_cuda`
(the same on CUDA, kernels launched one by one) and `torch_cuda_graphs` (the step
replayed as one CUDA graph), `tensorrt` (engine built with TensorRT), `torch_eager` (our
model, whole-prefix recompute with no cache: what a naive loop does) and
`hf_transformers` (Hugging Face GPT-2 with the same layers, width, heads and vocabulary,
random weights, decoding with its KV cache: `generate`, and a manual
`past_key_values` loop).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PREFILL = (64, 512, 2048)
GPU_TORCH = ("torch_cuda", "torch_cuda_graphs")
CONTEXTS = (256, 1024, 4096)
STEPS = 48


def _pcts(ms: list[float]) -> tuple[float, float]:
    a = np.array(ms, float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _row(backend: str, metric: str, n: int, ms: list[float] | float, unit: str = "ms") -> dict:
    if isinstance(ms, list):
        p50, p99 = _pcts(ms)
    else:
        p50 = p99 = float(ms)
    return {"backend": backend, "metric": metric, "context_or_tokens": n, "p50": round(p50, 4), "p99": round(p99, 4), "unit": unit}


def _prompt_tokens(vocab, n: int, seed: int = 0) -> list[int]:
    """A dense, valid token stream of n tokens (piano chords and runs) from the encoder."""
    from ..music.events import Note, Piece
    from .generate import prompt_tokens

    rng = np.random.default_rng(seed)
    notes, t = [], 0.0
    while True:
        for p in rng.choice(np.arange(48, 84), size=3, replace=False):
            notes.append(Note(t, 0.5, int(p), int(rng.integers(50, 110)), "piano"))
        t += 0.5
        toks = prompt_tokens(Piece(notes=notes), vocab, None, ["piano"]) if len(notes) % 60 == 0 else None
        if toks is not None and len(toks) >= n + 8:
            return toks[:n]


# --- one backend, in a child process ----------------------------------------------------------------
def run_backend(backend: str, model_dir: str | None, threads: int) -> list[dict]:
    if backend == "hf_transformers":
        return _run_hf(model_dir, threads)
    from .backends import open_runtime
    from ..training.checkpoint import DEFAULT_MODEL, load_vocab

    vocab = load_vocab(model_dir or DEFAULT_MODEL)
    if backend == "torch_eager":
        return _run_eager(model_dir, threads)
    if backend in GPU_TORCH:  # our torch runtime on CUDA, the step as kernels one by one or one CUDA graph
        rt = open_runtime(model_dir, "torch", device="cuda")
        rt.cuda_graphs = backend == "torch_cuda_graphs"
    else:
        rt = open_runtime(model_dir, backend, threads=threads)
    rows: list[dict] = []
    long = _prompt_tokens(vocab, 4096)
    for n in [n for n in PREFILL if n <= rt.context]:
        ms = []
        for _ in range(5):
            t0 = time.perf_counter()
            rt.prefill(long[:n])
            ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(_row(backend, "prefill_ms", n, ms[1:]))
    for c in [c for c in CONTEXTS if c <= rt.context]:
        start = min(c, rt.context - STEPS - 1) - 1
        rt.prefill(long[:start])
        ms = []
        tok = vocab.wait(1)
        for _ in range(STEPS):
            t0 = time.perf_counter()
            rt.step([tok])
            ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(_row(backend, "decode_step_ms", c, ms[4:]))
    # one incoming note while the player plays: a wait and a note-on, appended to 1024 tokens
    mid = min(1024, rt.context // 2)
    rt.prefill(long[:mid])
    note = [vocab.wait(3), vocab.note(0, 60, 5)]
    ms = []
    for _ in range(40):
        m = rt.mark()
        t0 = time.perf_counter()
        rt.append(note)
        ms.append((time.perf_counter() - t0) * 1e3)
        rt.rewind(m)
    rows.append(_row(backend, "append_note_ms", mid, ms[4:]))
    # phrase end -> first continuation token ready: the prompt is already streamed in; what
    # remains is the rest up to the answer's bar line, then one sampled token
    from .follow import PlayerProfile
    from .row_decoder import RowDecoder
    from .sampling import Grammar, LogitShaper, SamplingControls
    from ..music.tokenizer import decode_tokens

    # the default controls, following what the prompt played, through the one decode step
    shaper, grammar = LogitShaper(vocab, SamplingControls(seed=0)), Grammar(vocab)
    for t in long[:mid]:
        grammar.update(t)
    played = decode_tokens(long[:mid], vocab)
    heard = PlayerProfile.of_piece(played).heard(played.end)
    ms = []
    for _ in range(40):
        m = rt.mark()
        t0 = time.perf_counter()
        logits = rt.append([vocab.wait(12)])
        RowDecoder(vocab, shaper, grammar.copy(), shaper.rng, heard).sample(logits[0])
        ms.append((time.perf_counter() - t0) * 1e3)
        rt.rewind(m)
    rows.append(_row(backend, "first_token_ms", mid, ms[4:]))
    # one sampled token on its own (controls, grammar, density and follow biases, top-p): what
    # the decode step costs beyond the runtime, per token
    row = RowDecoder(vocab, shaper, grammar.copy(), shaper.rng, heard)
    ms = []
    for _ in range(200):
        t0 = time.perf_counter()
        row.sample(logits[0])
        ms.append((time.perf_counter() - t0) * 1e3)
    rows.append(_row(backend, "sample_ms", mid, ms[10:]))
    rows.append(_realtime(backend, rt, vocab, long))
    rows.append(_row(backend, "peak_rss_mb", 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "MB"))
    return rows


def _realtime(backend: str, rt, vocab, long: list[int]) -> dict:
    """Musical seconds generated per wall second (120 BPM) with the full sampling loop."""
    from .generate import continue_rows
    from .sampling import Grammar, LogitShaper, SamplingControls

    logits = rt.prefill(long[:512])
    g = Grammar(vocab)
    for t in long[:512]:
        g.update(t)
    t0 = time.perf_counter()
    from .follow import PlayerProfile
    from ..music.tokenizer import decode_tokens

    played = decode_tokens(long[:512], vocab)
    heard = PlayerProfile.of_piece(played).heard(played.end)
    rows = continue_rows(rt, logits, LogitShaper(vocab, SamplingControls()), [g], 8.0, 400, [0], heard)
    wall = time.perf_counter() - t0
    from ..music.tokenizer import StreamDecoder

    dec = StreamDecoder(vocab)
    dec.feed_many(rows[0])
    musical = dec.time * 60.0 / 120.0
    return _row(backend, "realtime_factor", len(rows[0]), musical / wall, "x")


def _run_eager(model_dir: str | None, threads: int) -> list[dict]:
    """Our model in plain PyTorch with no cache: each token recomputes the whole prefix."""
    import torch

    from ..training.checkpoint import load_model
    from ..music.features import features

    torch.set_num_threads(threads)
    model, vocab, _ = load_model(model_dir)
    model.eval()
    long = _prompt_tokens(vocab, 4096)
    rows = []
    with torch.inference_mode():
        # no cache: a prompt is one forward pass, and so is every decode step at context c
        for metric, sizes, runs in (("prefill_ms", PREFILL, 4), ("decode_step_ms", CONTEXTS, 5)):
            for n in [n for n in sizes if n <= model.cfg.context]:
                toks = np.array(long[:n])
                t, f = torch.from_numpy(toks)[None], torch.from_numpy(features(toks, vocab))[None]
                ms = [_timed(model, t, f) * 1e3 for _ in range(runs)]
                rows.append(_row("torch_eager", metric, n, ms[1:]))
    rows.append(_row("torch_eager", "peak_rss_mb", 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "MB"))
    return rows


def _run_hf(model_dir: str | None, threads: int) -> list[dict]:
    """GPT-2 of the same shape in Hugging Face transformers, with its own KV cache."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ..training.checkpoint import DEFAULT_MODEL, read_model_config

    torch.set_num_threads(threads)
    cfg = read_model_config(model_dir or DEFAULT_MODEL)
    mc = cfg.get("model", cfg)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=mc["n_layer"], n_embd=mc["d_model"], n_head=mc["n_head"],
                                    vocab_size=mc["vocab_size"], n_positions=mc["context"],
                                    n_inner=mc.get("mlp_ratio", 4) * mc["d_model"], bos_token_id=None,
                                    eos_token_id=None)).eval()
    rng = np.random.default_rng(0)
    long = torch.from_numpy(rng.integers(0, mc["vocab_size"], size=(1, mc["context"])))
    rows = []
    name = "hf_transformers"
    with torch.inference_mode():
        for n in PREFILL:
            ms = []
            for _ in range(5):
                t0 = time.perf_counter()
                hf(long[:, :n], use_cache=True)
                ms.append((time.perf_counter() - t0) * 1e3)
            rows.append(_row(name, "prefill_ms", n, ms[1:]))
        for c in CONTEXTS:  # manual past_key_values loop
            start = min(c, mc["context"] - STEPS - 1) - 1
            out = hf(long[:, :start], use_cache=True)
            past = out.past_key_values
            tok = long[:, start : start + 1]
            ms = []
            for i in range(STEPS):
                t0 = time.perf_counter()
                out = hf(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                ms.append((time.perf_counter() - t0) * 1e3)
            rows.append(_row(name, "decode_step_ms", c, ms[4:]))
        for c in CONTEXTS:  # generate(): per new token, net of its prefill
            start = min(c, mc["context"] - STEPS - 1) - 1
            ids = long[:, :start]
            kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            t1 = time.perf_counter()
            hf.generate(ids, max_new_tokens=STEPS + 1, min_new_tokens=STEPS + 1, **kw)
            t2 = time.perf_counter()
            per = ((t2 - t1) - (t1 - t0)) / STEPS * 1e3
            rows.append(_row(name + "_generate", "decode_step_ms", c, per))
    rows.append(_row(name, "peak_rss_mb", 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "MB"))
    return rows


# --- the floor ------------------------------------------------------------------------------------------
def measure_floor(model_dir: str | None) -> dict:
    """Weights over measured copy bandwidth, and FLOPs over measured matmul throughput."""
    from ..training.checkpoint import DEFAULT_MODEL, read_model_config

    cfg = read_model_config(model_dir or DEFAULT_MODEL)
    mc = cfg.get("model", cfg)
    d, L, V = mc["d_model"], mc["n_layer"], mc["vocab_size"]
    block = L * (4 * d * d + 2 * mc.get("mlp_ratio", 4) * d * d)
    weights_read = (block + V * d) * 4  # fp32 bytes touched per step: blocks and the tied head
    flops = 2 * (block + V * d)
    a = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, past the L3
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(7))
    bandwidth = 2 * a.nbytes / best  # read + write
    m = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    bestm = min(_timed(lambda: m @ m) for _ in range(7))
    peak = 2 * 1024**3 / bestm
    return {"weights_bytes_per_step": weights_read, "flops_per_step": flops, "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "matmul_gflop_s": round(peak / 1e9, 1), "floor_step_ms": round(max(weights_read / bandwidth, flops / peak) * 1e3, 4),
            "bandwidth_floor_ms": round(weights_read / bandwidth * 1e3, 4), "compute_floor_ms": round(flops / peak * 1e3, 4)}


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# --- driver ------------------------------------------------------------------------------------------------
def available(backends: list[str]) -> dict[str, str]:
    """{backend: why it cannot run here} for those of `backends` that cannot."""
    import importlib.util

    why = {}
    for b in backends:
        mod = {"onnxruntime": "onnxruntime", "torch": "torch", "torch_eager": "torch", "hf_transformers": "transformers",
               "tensorrt": "tensorrt", "torch_cuda": "torch", "torch_cuda_graphs": "torch"}.get(b)
        if mod is None or importlib.util.find_spec(mod) is None:
            why[b] = "not installed"
        elif b in GPU_TORCH or b == "tensorrt":
            from .backends import available_backends

            if b == "tensorrt" and "tensorrt" not in available_backends():
                why[b] = "TensorRT needs an NVIDIA GPU"
            elif b in GPU_TORCH and not _cuda():
                why[b] = "no CUDA device"
    return why


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(model_dir: str | None, backends: list[str], threads: int, progress=lambda s: None) -> dict:
    results, skipped = [], {}
    for b in backends:
        progress(b)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "musebridge.engine.decode.bench", b, model_dir or "", str(threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            skipped[b] = (p.stderr.strip().splitlines() or ["failed"])[-1][:300]
            continue
        results += json.loads(p.stdout.strip().splitlines()[-1])
    return {"machine": _machine(threads), "floor": measure_floor(model_dir), "results": results, "skipped": skipped}


def _machine(threads: int) -> dict:
    import platform

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version()}


def table(report: dict) -> str:
    """The results as a text table: one line per (backend, metric, size)."""
    lines = [f"{'backend':<24}{'metric':<18}{'n':>6}{'p50':>11}{'p99':>11}  unit"]
    for r in report["results"]:
        lines.append(f"{r['backend']:<24}{r['metric']:<18}{r['context_or_tokens']:>6}{r['p50']:>11.3f}{r['p99']:>11.3f}  {r['unit']}")
    f = report["floor"]
    lines.append(f"floor: {f['floor_step_ms']:.3f} ms/step ({f['weights_bytes_per_step'] / 1e6:.1f} MB at "
                 f"{f['copy_bandwidth_gb_s']} GB/s; {f['flops_per_step'] / 1e6:.1f} MFLOP at {f['matmul_gflop_s']} GFLOP/s)")
    for b, why in report.get("skipped", {}).items():
        lines.append(f"skipped {b}: {why}")
    return "\n".join(lines)


if __name__ == "__main__":  # child process: one backend, rows as JSON on the last line
    backend, model_dir, threads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    print(json.dumps(run_backend(backend, model_dir, threads)))
