"""`musebridge bench`: decode speed and memory, our runtimes beside the baselines, as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from musebridge.errors import MuseBridgeError

OURS = ["onnxruntime", "torch", "torch_cuda", "torch_cuda_graphs", "tensorrt"]
BASELINES = ["torch_eager", "hf_transformers"]


@click.command()
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--backends", default="all", show_default=True, help="all, or a comma list of onnxruntime,torch,torch_cuda,torch_cuda_graphs,tensorrt.")
@click.option("--baselines", is_flag=True, help="Also run PyTorch eager (no cache) and Hugging Face transformers GPT-2.")
@click.option("--threads", type=int, default=0, help="CPU threads per backend (0: the cores this machine has).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
def bench(model_dir, backends, baselines, threads, json_out) -> None:
    """Prefill, decode step, note append, first token, realtime factor and peak RSS per backend."""
    from musebridge.engine.decode import bench as B

    wanted = OURS if backends == "all" else [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in OURS + BASELINES]
    if unknown:
        raise MuseBridgeError(f"unknown backend(s) {', '.join(unknown)}; use {', '.join(OURS + BASELINES)}")
    if baselines:
        wanted += [b for b in BASELINES if b not in wanted]
    missing = B.available(wanted)
    run = [b for b in wanted if b not in missing]
    if not run:
        raise MuseBridgeError(f"none of {', '.join(wanted)} can run here; pip install onnxruntime (or torch)")
    threads = threads or os.cpu_count() or 1
    report = B.run(model_dir, run, threads, progress=lambda b: click.echo(f"benchmarking {b} ...", err=True))
    report["skipped"].update(missing)
    click.echo(B.table(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
        click.echo(f"wrote {json_out}", err=True)
