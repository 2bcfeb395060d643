"""`musebridge continuations`: the continuation benchmark from the command line.

A thin shell over `engine/decode/continuation_bench.py`: pick the prompts (a data folder's split
or folders of MIDI files), the systems (the model, the n-gram when there is one, and
always the real continuation and "repeat the last bar"), run, print the table per style,
write JSON and a PNG sheet of piano rolls.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from musebridge.engine.decode.backends import AUTO
from musebridge.errors import MuseBridgeError
from musebridge.files import write_atomic
from .options import Checked, decoding_options, dtype_option, runtime_dtype


@click.command("continuations")
@click.option("--data", type=click.Path(), default=None, help="A built data folder: prompts from its --split.")
@click.option("--midi", "midi_dirs", multiple=True, type=click.Path(), help="A folder of MIDI files (repeatable).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--source", "sources", multiple=True,
              help="Prompts from this collection of --data only (repeatable), e.g. pop909_band for band-context prompts.")
@click.option("--prompt-bars", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--bars", type=click.IntRange(1, 64), default=4, show_default=True, help="Bars each system continues.")
@click.option("--limit", type=click.IntRange(1, 100000), default=200, show_default=True, help="At most this many prompts.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (each prompt once per seed).")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--ngram", type=click.Path(), default=None,
              help="An n-gram .npz to sample beside the model (default: DATA/baselines/ngram.npz, if there).")
@click.option("--backend", type=click.Choice(["auto", *AUTO]), default="auto", show_default=True)
@dtype_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write every row and median.")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="A sheet of piano rolls: prompt | answers | real.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Write the medians per style group as a Markdown table (the model card's).")
@click.option("--rolls", type=click.IntRange(1, 40), default=6, show_default=True, help="Prompts on the PNG sheet.")
@decoding_options
def continuations(data, midi_dirs, split, sources, prompt_bars, bars, limit, seeds, model_dir, ngram, decoding,
                  backend, dtype, json_out, png, markdown, rolls) -> None:
    """Continue real prompts and measure the answers beside the real next bars."""
    from musebridge.engine.decode.backends import open_runtime
    from musebridge.engine.training.baselines import NGramModel, NGramRuntime
    from musebridge.engine.decode.continuation_bench import (cases_from_folder, cases_from_split, markdown_table,
                                                       require_matplotlib, roll_sheet, run, table)
    from musebridge.engine.decode.sampling import SamplingControls

    if not data and not midi_dirs:
        raise click.UsageError("give prompts: --data DATA (its --split) and/or --midi FOLDER")
    if png:
        require_matplotlib()
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise MuseBridgeError(f"--seeds {seeds!r} is invalid: use whole numbers separated by commas, e.g. 0,1,2") from None
    cases = []
    if data:
        cases += cases_from_split(data, split, prompt_bars, bars, limit, sources=tuple(sources))
    for folder in midi_dirs:
        if not Path(folder).is_dir():
            raise MuseBridgeError(f"MIDI folder {folder} not found; pass a folder of .mid files")
        cases += cases_from_folder(folder, prompt_bars, bars, limit)
    cases = cases[:limit]
    if not cases:
        raise MuseBridgeError(f"no usable prompts: need pieces with {prompt_bars + bars} bars of notes")
    runtime = open_runtime(model_dir, backend, dtype=runtime_dtype(dtype, backend))
    systems = {"model": runtime}
    ngram_path = Path(ngram) if ngram else (Path(data) / "baselines" / "ngram.npz" if data else None)
    if ngram_path is not None and ngram_path.is_file():
        systems["ngram"] = NGramRuntime(NGramModel.load(ngram_path), runtime.vocab)
    elif ngram:
        raise MuseBridgeError(f"n-gram file {ngram} not found; fit one with musebridge train --arch ngram")
    controls = SamplingControls(**decoding)

    def progress(i: int, n: int) -> None:
        if i == n or i % 10 == 0:
            click.echo(f"  {i}/{n} prompts", err=True)

    result = run(cases, systems, bars, controls, seed_list, progress)
    result["settings"] = {"prompt_bars": prompt_bars, "bars": bars, "seeds": list(seed_list), **decoding,
                          "model": str(model_dir or "default"), "backend": runtime.name,
                          "dtype": dtype,
                          "split": split if data else None, "midi": list(midi_dirs)}
    click.echo(table(result))
    groups = [g for g in result["groups"]["real"] if g != "all"]
    if len(groups) > 1:  # per style family; every single style is in the JSON
        for g in groups:
            click.echo("")
            click.echo(table(result, g, by="group"))
    if json_out:
        text = json.dumps(result, indent=1) + "\n"
        write_atomic(json_out, lambda tmp: Path(tmp).write_text(text))
    if markdown:
        write_atomic(markdown, lambda tmp: Path(tmp).write_text(markdown_table(result)))
    if png:
        shown = tuple(s for s in ("model", "ngram", "repeat", "real") if s in result["medians"])
        write_atomic(png, lambda tmp: roll_sheet(cases, tmp, shown, rolls))
        click.echo(f"piano rolls: {png}")
