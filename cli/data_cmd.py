"""`musebridge data build|stats`: build tokenized shards and look at them."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from musebridge.errors import VocabError


@click.group()
def data() -> None:
    """Build training data from MIDI folders and the music21 corpus; show its stats."""


@data.command("build")
@click.option("--source", "sources", multiple=True, required=True, metavar="SRC",
              help="'music21', a folder of .mid files, FOLDER=LABEL to give all its files one style, or "
                   "pop909-band:POP909_DIR[,GROOVE_DIR][=LABEL] for POP909 arranged for a band (lead, bass, "
                   "drums from Groove). Repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumes if it holds a build).")
@click.option("--workers", type=int, default=None, help="Parallel processes [default: all cores].")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds before one piece is skipped.")
@click.option("--limit", type=int, default=None, help="Only the first N pieces (in key order): for quick trials.")
@click.option("--fresh", is_flag=True, help="Ignore cached results and parse everything again.")
@click.option("--time-mode", type=click.Choice(["beats", "seconds"]), default="beats", show_default=True,
              help="Waits in ticks of a beat, or 10 ms waits for expressive performances.")
@click.option("--ticks-per-beat", type=int, default=12, show_default=True, help="Grid: 12 keeps triplets and 16ths exact; 4 is coarser.")
@click.option("--velocity-bins", type=int, default=8, show_default=True)
def build_cmd(sources, out, workers, timeout, limit, fresh, time_mode, ticks_per_beat, velocity_bins) -> None:
    """Parse, tokenize and shard every piece of the sources into OUT."""
    from musebridge.engine.data.data_build import build, collect_tasks
    from musebridge.engine.music.vocab import VocabConfig

    try:
        config = VocabConfig(time_mode=time_mode, ticks_per_beat=ticks_per_beat, velocity_bins=velocity_bins)
    except VocabError as e:
        raise click.BadParameter(str(e)) from None
    console = Console(stderr=True)
    with console.status("listing sources"):
        tasks = collect_tasks(sources)
    state = {"ok": 0, "failed": 0, "notes": 0, "logged": time.monotonic()}
    columns = (
        TextColumn("[bold]building"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("build", total=len(tasks), info="")

        def report(done: int, total: int, r) -> None:
            if r.error:
                state["failed"] += 1
                bar.console.print(f"[yellow]skipped[/] {r.key}: {r.error}")
            else:
                state["ok"] += 1
                state["notes"] += r.notes
            info = f"{state['ok']} new ok, {state['failed']} skipped, {state['notes']:,} notes"
            bar.update(task, completed=done, total=total, info=info)
            now = time.monotonic()
            if not console.is_terminal and (now - state["logged"] > 30 or done == total):
                state["logged"] = now  # logs and CI get a line now and then instead of a live bar
                console.print(f"{done:,}/{total:,} pieces: {info}")

        summary = build(tasks, out, config, workers, timeout, limit, fresh, progress=report)
    t = Table(title=f"built {summary.out}", show_header=False)
    rows = [
        ("pieces", f"{summary.pieces:,}"), ("skipped (bad or empty)", f"{summary.failed:,}"),
        ("notes", f"{summary.notes:,}"), ("tokens", f"{summary.tokens:,}"),
        ("tokens per note", f"{summary.tokens / max(summary.notes, 1):.2f}"), ("vocabulary", f"{summary.vocab_size:,} tokens"),
        ("parsed this run", f"{summary.parsed_now:,} pieces"), ("wall time", f"{summary.seconds:,.1f} s"),
        ("CPU time parsing (all runs)", f"{summary.cpu_seconds:,.0f} s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


@data.command("stats")
@click.argument("folder", type=click.Path())
def stats_cmd(folder: str) -> None:
    """Pieces, notes and tokens per split and per style label."""
    from musebridge.engine.data.dataset import TokenShards

    shards = TokenShards(folder)
    splits, styles = shards.stats()
    console = Console()
    order = ["train", "val", "test"]
    t = Table(title=f"{folder}: {shards.vocab!r}")
    for col in ("split", "pieces", "notes", "tokens", "tokens/note"):
        t.add_column(col, justify="left" if col == "split" else "right")
    total = [0, 0, 0]
    for s in order:
        st = splits.get(s)
        if st is None:
            continue
        t.add_row(s, f"{st.pieces:,}", f"{st.notes:,}", f"{st.tokens:,}", f"{st.tokens / max(st.notes, 1):.2f}")
        total = [total[0] + st.pieces, total[1] + st.notes, total[2] + st.tokens]
    t.add_row("all", f"{total[0]:,}", f"{total[1]:,}", f"{total[2]:,}", f"{total[2] / max(total[1], 1):.2f}", style="bold")
    console.print(t)
    t = Table(title="by style")
    t.add_column("style")
    for s in order:
        t.add_column(f"{s} pieces", justify="right")
    t.add_column("notes", justify="right")
    t.add_column("tokens", justify="right")
    for style in sorted(styles, key=lambda st: -sum(x.notes for x in styles[st].values())):
        d = styles[style]
        t.add_row(style, *[f"{d[s].pieces:,}" if s in d else "0" for s in order],
                  f"{sum(x.notes for x in d.values()):,}", f"{sum(x.tokens for x in d.values()):,}")
    console.print(t)
    failed = shards.manifest.get("failed", [])
    if failed:
        console.print(f"{len(failed):,} sources skipped while building (listed in manifest.json under 'failed')")
