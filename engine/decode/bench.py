"""`musebridge bench`: our runtimes against what a user would otherwise pick, side by side.

Each backend runs in its own child process (so peak RSS is its own, and the ONNX
Runtime path never has torch loaded), one after another on the same machine in one
run; the floor is measured in the same run, in a child of its own with the same thread
count. Absolute times on a shared machine move by tens of percent between runs, so read
the ratios.

Backends here (our runtimes): `onnxruntime` (its default graphs: int8 on a CPU, `ort_runtime.CPU_DTYPE`;
`onnxruntime_fp32` and `onnxruntime_int8` ask for one kind), `torch` (our model, static cache), on a GPU
`torch_cuda` (the same on CUDA, kernels launched one by one) and `torch_cuda_graphs` (the
step replayed as one CUDA graph), `tensorrt` (engine built with TensorRT). The peers
(`--baselines`: PyTorch eager, Hugging Face GPT-2, OpenVINO on our graphs, CTranslate2) live
in `bench_peers`. Every timed metric is a row with p50, p99 and max (`_row`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .bench_rows import CONTEXTS, PREFILL, STEPS, _prompt_tokens, _row, _timed, runtime_rows  # noqa: F401 (the bench's names)

GPU_TORCH = ("torch_cuda", "torch_cuda_graphs")
ORT_DTYPES = {"onnxruntime_fp32": "fp32", "onnxruntime_int8": "int8"}  # our graphs of one kind, beside peers of that kind
FLOOR = "floor"  # the child's first argument that measures the floor instead of a backend


# --- one backend, in a child process ----------------------------------------------------------------
def run_backend(backend: str, model_dir: str | None, threads: int) -> list[dict]:
    """Every row of one backend (ours here, a peer's in `bench_peers`). threads 0: ours as they
    open by default (ONNX Runtime: the int8 step on one thread, prompts on every core), each
    peer on every core (`cores()`)."""
    from .bench_peers import PEERS, run_peer

    if backend in PEERS:
        return run_peer(backend, model_dir, threads or cores())
    from .backends import open_runtime
    from ..training.checkpoint import DEFAULT_MODEL, load_vocab

    vocab = load_vocab(model_dir or DEFAULT_MODEL)
    if backend in GPU_TORCH:  # our torch runtime on CUDA, the step as kernels one by one or one CUDA graph
        rt = open_runtime(model_dir, "torch", device="cuda")
        rt.cuda_graphs = backend == "torch_cuda_graphs"
    elif backend in ORT_DTYPES:  # fp32 beside the fp32 peers, int8 (u8 weights) beside the int8 ones
        rt = open_runtime(model_dir, "onnxruntime", threads=threads or None, dtype=ORT_DTYPES[backend])
    else:
        rt = open_runtime(model_dir, backend, threads=threads or None)
    return runtime_rows(backend, rt, vocab)


# --- the floor ------------------------------------------------------------------------------------------
L3_BUFFER = 8 * 1024 * 1024  # copied from, and as much again copied to: well inside a 32 MB L3
DRAM_BUFFER = 256 * 1024 * 1024  # well past any L3 here


def measure_floor(model_dir: str | None) -> dict:
    """The least a decode step can take here: max(FLOPs / matmul peak, weight bytes / the copy
    bandwidth of the level the weights live in).

    A step reads every fp32 weight once. When they fit in the L3 (the default model's 21 MB do
    in a 32 MB L3) they stay there from step to step, so DRAM bandwidth would put the floor too
    low a bar -- a runtime could beat that "floor" without being near the limit. Both copy
    bandwidths are measured (a buffer inside the L3, many repeats, best of; one well past it)
    and both floors reported; `floor_step_ms` uses the level the weights live in, and so do the
    old keys `copy_bandwidth_gb_s` and `bandwidth_floor_ms`. Numpy copies and multiplies on the
    threads the bench gives each backend (`run` measures this in a child with them)."""
    from ..training.checkpoint import DEFAULT_MODEL, read_model_config

    cfg = read_model_config(model_dir or DEFAULT_MODEL)
    mc = cfg.get("model", cfg)
    d, L, V = mc["d_model"], mc["n_layer"], mc["vocab_size"]
    block = L * (4 * d * d + 2 * mc.get("mlp_ratio", 4) * d * d)
    weights_read = (block + V * d) * 4  # fp32 bytes touched per step: blocks and the tied head
    flops = 2 * (block + V * d)
    l3 = cache_size(3)
    l3_bw = copy_bandwidth(min(L3_BUFFER, l3 // 4) if l3 else L3_BUFFER, 200)
    dram_bw = copy_bandwidth(DRAM_BUFFER, 5)
    m = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    peak = 2 * 1024**3 / min(_timed(lambda: m @ m) for _ in range(7))
    lives_in = "L3" if l3 and weights_read <= l3 else "DRAM"
    bandwidth = l3_bw if lives_in == "L3" else dram_bw
    ms = {"l3": weights_read / l3_bw * 1e3, "dram": weights_read / dram_bw * 1e3, "compute": flops / peak * 1e3}
    return {"weights_bytes_per_step": weights_read, "flops_per_step": flops, "matmul_gflop_s": round(peak / 1e9, 1),
            "l3_bytes": l3, "weights_live_in": lives_in,
            "l3_copy_bandwidth_gb_s": round(l3_bw / 1e9, 2), "dram_copy_bandwidth_gb_s": round(dram_bw / 1e9, 2),
            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "l3_floor_ms": round(ms["l3"], 4), "dram_floor_ms": round(ms["dram"], 4),
            "compute_floor_ms": round(ms["compute"], 4), "bandwidth_floor_ms": round(weights_read / bandwidth * 1e3, 4),
            "floor_step_ms": round(max(weights_read / bandwidth * 1e3, ms["compute"]), 4),
            # the int8 graphs (the CPU default) read a quarter of the bytes; their 8-bit products
            # can outrun the fp32 matmul peak, so only the bytes bound them (a lower bound)
            "int8_floor_ms": round(weights_read / 4 / (l3_bw if l3 and weights_read // 4 <= l3 else dram_bw) * 1e3, 4)}


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes per second moved (read + write) by the fastest of `repeats` copies of an nbytes buffer."""
    a = np.ones(max(1, nbytes // 8))
    b = np.empty_like(a)
    np.copyto(b, a)  # pages touched, and a small buffer brought into the cache
    return 2 * a.nbytes / min(_timed(np.copyto, b, a) for _ in range(repeats))


def cache_size(level: int, cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Bytes of the data (or unified) CPU cache of `level` as sysfs tells it, None when it does not."""
    for index in sorted(cpu.glob("index*")):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1:], 1)
        digits = size.rstrip("KMGB")
        if digits.isdigit():
            return int(digits) * scale
    return None


# --- driver ------------------------------------------------------------------------------------------------
OURS_NEED = {"onnxruntime": ("onnxruntime",), **{b: ("onnxruntime",) for b in ORT_DTYPES}, "torch": ("torch",), "tensorrt": ("tensorrt",), "torch_cuda": ("torch",),
             "torch_cuda_graphs": ("torch",)}


def available(backends: list[str]) -> dict[str, str]:
    """{backend: why it cannot run here} for those of `backends` that cannot (one line each)."""
    import importlib.util

    from .bench_peers import PEERS

    why = {}
    for b in backends:
        mods = {**OURS_NEED, **PEERS}.get(b)
        missing = [m for m in mods or () if importlib.util.find_spec(m) is None]
        if mods is None or missing:
            why[b] = f"not installed ({', '.join(missing)})" if missing else "not installed"
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


def _child(args: list[str], threads: int) -> tuple[object, str]:
    """(the JSON on the last line of this module run as a child with `args`, "") or (None, its
    error's last line): each backend, and the floor, in a process of its own at `threads`."""
    n = str(threads or cores())
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}
    cmd = [sys.executable, "-m", "musebridge.engine.decode.bench", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None, (p.stderr.strip().splitlines() or ["failed"])[-1][:300]
    return json.loads(p.stdout.strip().splitlines()[-1]), ""


def run(model_dir: str | None, backends: list[str], threads: int, progress=lambda s: None) -> dict:
    results, skipped = [], {}
    for b in backends:
        progress(b)
        rows, why = _child([b, model_dir or "", str(threads)], threads)
        if rows is None:
            skipped[b] = why
        else:
            results += rows
    progress("floor")
    floor, why = _child([FLOOR, model_dir or "", str(threads)], threads)
    if floor is None:
        raise RuntimeError(f"measuring the floor failed: {why}")
    return {"machine": _machine(threads), "floor": floor, "results": results, "skipped": skipped}


def cores() -> int:
    """The threads a peer gets when the bench is given none: every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _machine(threads: int) -> dict:
    import platform

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "threads": threads or "default (peers: every core)", "python": platform.python_version()}


def table(report: dict) -> str:
    """The results as a text table: one line per (backend, metric, size), then the floor."""
    lines = [f"{'backend':<26}{'metric':<18}{'n':>6}{'p50':>11}{'p99':>11}{'max':>11}  unit"]
    for r in report["results"]:
        top = r.get("max", r["p99"])
        lines.append(f"{r['backend']:<26}{r['metric']:<18}{r['context_or_tokens']:>6}{r['p50']:>11.3f}{r['p99']:>11.3f}"
                     f"{top:>11.3f}  {r['unit']}")
    lines += floor_lines(report["floor"])
    for b, why in report.get("skipped", {}).items():
        lines.append(f"skipped {b}: {why}")
    return "\n".join(lines)


def floor_lines(f: dict) -> list[str]:
    """The floor, and both bandwidth floors it was chosen from, as text."""
    where = f"fit in the {f['l3_bytes'] / 2**20:.0f} MiB L3" if f["weights_live_in"] == "L3" else "past the L3"
    return [f"floor: {f['floor_step_ms']:.3f} ms/step = max(compute {f['compute_floor_ms']:.3f} ms: "
            f"{f['flops_per_step'] / 1e6:.1f} MFLOP at {f['matmul_gflop_s']} GFLOP/s, "
            f"weights {f['bandwidth_floor_ms']:.3f} ms: {f['weights_bytes_per_step'] / 1e6:.1f} MB ({where}) "
            f"at {f['copy_bandwidth_gb_s']} GB/s)",
            f"  weights at the L3's copy bandwidth {f['l3_copy_bandwidth_gb_s']} GB/s: {f['l3_floor_ms']:.3f} ms; "
            f"at DRAM's {f['dram_copy_bandwidth_gb_s']} GB/s: {f['dram_floor_ms']:.3f} ms",
            f"  int8 weights (a quarter of the bytes): {f['int8_floor_ms']:.3f} ms"]


if __name__ == "__main__":  # child process: one backend's rows (or the floor) as JSON on the last line
    what, model_dir, threads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    print(json.dumps(measure_floor(model_dir) if what == FLOOR else run_backend(what, model_dir, threads)))
