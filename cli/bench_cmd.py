"""`musebridge bench`: decode speed and memory, our runtimes beside the baselines, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from musebridge.errors import MuseBridgeError

OURS = ["onnxruntime", "torch", "torch_cuda", "torch_cuda_graphs", "tensorrt"]


@click.command()
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--backends", default="all", show_default=True, help="all, or a comma list of onnxruntime,torch,torch_cuda,torch_cuda_graphs,tensorrt "
                   "(also onnxruntime_fp32, onnxruntime_int8 and the --baselines peers by name).")
@click.option("--baselines", is_flag=True,
              help="Also run the peers: PyTorch eager (no cache), Hugging Face GPT-2, OpenVINO on our graphs, "
                   "CTranslate2 GPT-2 (fp32 and int8; with onnxruntime, whose CPU default is int8, our fp32 graphs "
                   "beside the fp32 peers as onnxruntime_fp32); a peer whose package is missing is skipped.")
@click.option("--threads", type=int, default=0, help="CPU threads per backend (0: ours as they open by default, each peer on every core).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
def bench(model_dir, backends, baselines, threads, json_out) -> None:
    """Prefill, decode step, note append, first token, realtime factor and peak RSS per backend."""
    from musebridge.engine.decode import bench as B
    from musebridge.engine.decode.bench_peers import PEERS

    known = OURS + list(B.ORT_DTYPES) + list(PEERS)
    wanted = list(OURS) if backends == "all" else [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in known]
    if unknown:
        raise MuseBridgeError(f"unknown backend(s) {', '.join(unknown)}; use {', '.join(known)}")
    if baselines:  # our fp32 graphs go beside the fp32 peers (the default, int8, beside the int8 one)
        extra = ["onnxruntime_fp32"] if "onnxruntime" in wanted else []
        wanted += [b for b in extra + list(PEERS) if b not in wanted]
    missing = B.available(wanted)
    run = [b for b in wanted if b not in missing]
    if not run:
        raise MuseBridgeError(f"none of {', '.join(wanted)} can run here; pip install onnxruntime (or torch)")
    report = B.run(model_dir, run, threads, progress=lambda b: click.echo(f"benchmarking {b} ...", err=True))
    report["skipped"].update(missing)
    click.echo(B.table(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
        click.echo(f"wrote {json_out}", err=True)
