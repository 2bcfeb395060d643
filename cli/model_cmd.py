"""`musebridge train`, `generate`, `eval`, `pack` and `export`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from musebridge.engine.decode.backends import BACKENDS
from musebridge.errors import MuseBridgeError
from .options import Checked, decoding_options, dtype_option, runtime_dtype


@click.command()
@click.option("--data", required=True, type=click.Path(), help="A folder built by `musebridge data build`.")
@click.option("--config", "model", type=click.Choice(["tiny", "small", "base"]), default="small", show_default=True)
@click.option("--arch", type=click.Choice(["transformer", "lstm", "ngram", "critic", "style"]), default="transformer",
              show_default=True, help="lstm and ngram: the baselines (lstm sized to the transformer); critic: real vs "
              "--generator's output, for ranking; style: the style classifier for evaluation.")
@click.option("--generator", type=click.Path(), default=None, help="--arch critic: the model whose output it learns to spot.")
@click.option("--samples", type=int, default=256, show_default=True, help="--arch critic: generated (and real) windows.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (resumes if it holds a run).")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--seq-len", type=int, default=2048, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup", type=int, default=100, show_default=True)
@click.option("--eval-every", type=int, default=100, show_default=True)
@click.option("--save-every", type=int, default=200, show_default=True)
@click.option("--max-minutes", type=float, default=0.0, help="Stop and save after this long (0: no limit).")
@click.option("--mixup", type=float, default=0.0, help="Embedding mixup alpha (MuseNet); 0 is off.")
@click.option("--no-augment", is_flag=True, help="No transposition or velocity augmentation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default).")
@click.option("--init", "init", type=click.Path(), default=None,
              help="Start from this model folder's weights (fine-tune) instead of random ones.")
@click.option("--prefix-share", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Share of windows cut mid-piece that start with their piece's style and instrument tokens.")
@click.option("--revoice", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Share of augmented windows with one melodic part moved to another family.")
def train(data, model, arch, generator, samples, out, steps, batch_size, seq_len, lr, warmup, eval_every, save_every, max_minutes, mixup, no_augment, seed, threads, init, prefix_share, revoice) -> None:
    """Train a model on built shards (torchrun for several GPUs)."""
    try:
        import torch
    except ImportError:
        raise MuseBridgeError("training needs PyTorch: pip install torch==2.13.0 (CPU) then pip install -e '.[train]'") from None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from musebridge.engine.training.train import TrainConfig, train as run_train

    if arch == "ngram":
        _fit_ngram(data, out)
        return
    if arch in ("critic", "style"):
        from musebridge.engine.training.critic import train_critic, train_style

        with Console(stderr=True).status(f"training the {arch} classifier"):
            if arch == "critic":
                info = train_critic(generator, data, out, samples=samples, steps=steps, seed=seed)
                click.echo(f"critic in {out}: held-out accuracy {info['held_out_accuracy']:.3f} (real vs generated)")
            else:
                info = train_style(data, out, steps=steps, seed=seed)
                acc = "n/a" if info["val_accuracy"] is None else f"{info['val_accuracy']:.3f}"
                click.echo(f"style classifier in {out}: {len(info['classes'])} styles, validation accuracy {acc}")
        return

    if threads:
        torch.set_num_threads(threads)
    for name, value in (("steps", steps), ("batch-size", batch_size), ("seq-len", seq_len), ("eval-every", eval_every), ("save-every", save_every)):
        if value < 1:
            raise click.BadParameter(f"--{name} must be at least 1, got {value}")
    if not lr > 0:
        raise click.BadParameter(f"--lr must be positive, got {lr}")
    cfg = TrainConfig(model=model, arch=arch, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, min_lr=lr / 10, warmup=warmup,
                      eval_every=eval_every, save_every=save_every, max_minutes=max_minutes, mixup=mixup,
                      augment=not no_augment, seed=seed, init=init, prefix_share=prefix_share,
                      revoice_share=revoice)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 talks
        run_train(data, out, cfg)
        return
    console = Console(stderr=True)
    cols = (TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console) as bar:
        task = bar.add_task("train", total=steps, info="loading data")
        state = {"val": None}

        def log(rec: dict) -> None:
            if rec["event"] == "start":
                bar.update(task, completed=rec["step"], info=f"{rec['params'] / 1e6:.1f} M params on {rec['device']}")
                console.print(f"{rec['params']:,} parameters, {rec['train_tokens']:,} training tokens, device {rec['device']}")
            elif rec["event"] in ("step", "eval"):
                if "val_loss" in rec:
                    state["val"] = rec["val_loss"]
                    console.print(f"step {rec['step']}: train {rec['loss']:.3f}, val {rec['val_loss']:.3f} nats/token")
                val = f", val {state['val']:.3f}" if state["val"] is not None else ""
                bar.update(task, completed=rec["step"], info=f"loss {rec['loss']:.3f}{val}, {rec['tokens_per_s']:.0f} tok/s")

        last = run_train(data, out, cfg, log)
    console.print(f"best validation loss {last['best_val_loss']:.4f} nats/token; model in {Path(out) / 'model'}")


def _fit_ngram(data: str, out: str) -> None:
    import time

    import numpy as np

    from musebridge.engine.training.baselines import NGramModel
    from musebridge.engine.data.dataset import TokenShards

    t0 = time.time()
    shards = TokenShards(data)
    model = NGramModel(len(shards.vocab)).fit(np.asarray(shards.tokens("train")))
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save(Path(out) / "ngram.npz")
    click.echo(f"fitted a {model.order}-gram on {len(shards.tokens('train')):,} tokens in {time.time() - t0:.1f} s: {Path(out) / 'ngram.npz'}")


@click.command("eval")
@click.option("--data", required=True, type=click.Path(), help="A built data folder.")
@click.option("--model", "models", multiple=True, type=click.Path(), help="Model folder(s) (default: the shipped model).")
@click.option("--baselines", "baselines", type=click.Path(), default=None, is_flag=False, flag_value="DATA/baselines",
              help="Also score the baselines in this folder (lstm/ and ngram.npz; default DATA/baselines).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--seq-len", type=int, default=2048, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON.")
@click.option("--style-classifier", type=click.Path(), default=None,
              help="Also give the inception-style score of each model's generations (and of real passages).")
@click.option("--samples", type=int, default=64, show_default=True, help="Generated passages for --style-classifier.")
@click.option("--source", "sources", multiple=True,
              help="Score only the split's pieces of this collection (repeatable), e.g. pop909_band for the band-context test set.")
def evaluate(data, models, baselines, split, seq_len, json_out, style_classifier, samples, sources) -> None:
    """Held-out NLL in nats/token and bits/note, side by side."""
    import json
    from dataclasses import asdict

    from rich.table import Table

    from musebridge.engine.training.checkpoint import DEFAULT_MODEL
    from musebridge.engine.training.evaluate import evaluate as run_eval

    named = {Path(m).name if Path(m).name != "model" else Path(m).parent.name: m for m in (models or [str(DEFAULT_MODEL)])}
    ngram = None
    if baselines:
        base = Path(data) / "baselines" if baselines == "DATA/baselines" else Path(baselines)
        if (base / "lstm" / "model" / "config.json").exists():
            named["lstm"] = str(base / "lstm" / "model")
        if (base / "ngram.npz").exists():
            ngram = base / "ngram.npz"
        if "lstm" not in named and ngram is None:
            raise MuseBridgeError(f"no baselines in {base}; train them: musebridge train --arch ngram --data {data} --out {base} "
                                  f"and musebridge train --arch lstm --data {data} --out {base / 'lstm'}")
    rows = run_eval(data, named, ngram, split, seq_len, tuple(sources))
    which = f"{split}, {' + '.join(sources)}" if sources else split
    t = Table(title=f"held-out NLL on {which} ({rows[0].tokens:,} tokens)")
    for c in ("model", "parameters", "nats/token", "bits/note", "seconds"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(r.name, f"{r.params:,}", f"{r.nats_per_token:.4f}", f"{r.bits_per_note:.3f}", f"{r.seconds:.0f}")
    Console().print(t)
    result = {"split": split, "sources": list(sources), "nll": [asdict(r) for r in rows]}
    if style_classifier:
        from musebridge.engine.training.critic import style_scores

        result["style_score"] = {}
        for name, folder in named.items():
            if name == "lstm":
                continue
            sc = style_scores(style_classifier, folder, data, split, samples)
            result["style_score"][name] = sc
            click.echo(f"inception-style score ({sc['classes']} styles, {samples} passages): {name} {sc['generated']:.2f}, "
                       f"real passages {sc['real']:.2f}")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1))


@click.command()
@click.option("--prompt", type=click.Path(), default=None, help="A .mid file to continue (default: start from silence).")
@click.option("--bars", type=Checked(click.FLOAT, "decode.generate.check_bars"), default=8, show_default=True,
              help="Length of the continuation in bars (up to 256).")
@click.option("--style", default=None, help="Style/composer label from the model's vocabulary (see --list-styles).")
@click.option("--strength", "strengths", multiple=True, metavar="FAMILY=S",
              help="Instrument strengths 0..1, e.g. piano=1,drums=0 (0 mutes, 0.5 neutral, 1 favours).")
@click.option("--key", default=None, help="Keep pitched notes in a key, e.g. 'C major', 'F# minor'.")
@click.option("--density", type=Checked(click.FLOAT, "decode.sampling.check_density"), default=None, help="Target note-ons per beat.")
@click.option("--seed", type=Checked(click.INT, "decode.sampling.check_seed"), default=None, help="Same seed, same notes (0 to 2^32-1).")
@click.option("--variations", type=Checked(click.INT, "decode.generate.check_variations"), default=1, show_default=True,
              help="How many continuations (written as OUT-1.mid, ...).")
@click.option("--with-prompt", is_flag=True, help="Write the prompt before the continuation.")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Output .mid file.")
@click.option("--critic", type=click.Path(), default=None,
              help="Rank variations with this critic (default: the model folder's critic/, if any).")
@click.option("--list-styles", is_flag=True, help="Print the model's style labels and exit.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True,
              help="Decoder: auto is onnxruntime when installed, else torch.")
@dtype_option
@decoding_options
def generate(prompt, bars, style, strengths, decoding, key, density, seed, variations, with_prompt,
             model_dir, critic, out, list_styles, backend, dtype) -> None:
    """Continue a MIDI prompt with the model and write the result as MIDI."""
    from musebridge.engine.training.checkpoint import load_vocab, DEFAULT_MODEL
    from musebridge.engine.music.events import Piece
    from musebridge.engine.music.midi_file import read_midi, write_midi
    from musebridge.engine.decode.sampling import SamplingControls, parse_strengths

    folder = Path(model_dir) if model_dir else DEFAULT_MODEL
    vocab = load_vocab(folder)
    if list_styles:
        click.echo("\n".join(vocab.styles))
        return
    if out is None:
        raise click.UsageError("--out is required (the .mid file to write)")
    if style is not None and style not in vocab.styles:
        raise MuseBridgeError(f"style {style!r} is not in the model's vocabulary; see musebridge generate --list-styles")
    parsed: dict[str, float] = {}
    for s in strengths:
        parsed.update(parse_strengths(s, vocab))
    controls = SamplingControls(**decoding, seed=seed, strengths=parsed, key=key, density=density)
    piece = read_midi(prompt) if prompt else Piece()
    from musebridge.engine.decode.backends import open_runtime
    from musebridge.engine.decode.generate import generate as run_generate

    critic_dir = Path(critic) if critic else folder / "critic"
    ranking = variations > 1 and (critic or (critic_dir / "classifier.json").exists())  # on ONNX Runtime: no torch needed
    if critic or ranking:  # checked before generating, not after minutes of it
        _check_critic(critic_dir, vocab)
    runtime = open_runtime(folder, backend, dtype=runtime_dtype(dtype, backend))
    vocab = runtime.vocab
    results = run_generate(runtime, piece, bars, controls, style, variations)
    scores = [None] * len(results)
    if ranking:
        from musebridge.engine.decode.critic_score import rank_continuations

        scores = rank_continuations(critic_dir, piece, [r.tokens for r in results], vocab, style)
        order = sorted(range(len(results)), key=lambda i: -scores[i])
        results, scores = [results[i] for i in order], [scores[i] for i in order]
    outs = [Path(out)] if variations == 1 else [Path(out).with_name(f"{Path(out).stem}-{i + 1}{Path(out).suffix}") for i in range(variations)]
    for res, path, score in zip(results, outs, scores):
        clip = res.piece
        if with_prompt:
            from musebridge.engine.music.events import Note

            shift = piece.end
            clip = Piece(notes=piece.notes + [Note(n.start + shift, n.duration, n.pitch, n.velocity, n.family) for n in clip.notes],
                         pedals=piece.pedals, tempos=piece.tempos or clip.tempos, time_signatures=piece.time_signatures or clip.time_signatures,
                         style=style)
        meta = {**controls.with_(seed=res.seed).to_dict(), "bars": bars, "style": style,
                "prompt": str(prompt) if prompt else None,
                "model": str(folder), "backend": runtime.name, "critic_score": None if score is None else round(float(score), 4)}
        write_midi(clip, path, metadata=meta)
        fams = ", ".join(clip.families) or "nothing"
        ranked = "" if score is None else f", critic {score:.2f}"
        click.echo(f"{path}: {len(clip.notes)} notes over {clip.end:.1f} beats ({fams}), seed {res.seed}{ranked}")


def _check_critic(folder: Path, vocab) -> None:
    """A critic folder that exists, loads (its graph built and opened), and reads this model's tokens --
    or one line saying which not."""
    from musebridge.engine.decode.critic_score import open_critic

    if not folder.is_dir():
        raise MuseBridgeError(f"critic folder {folder} not found; pass a folder written by musebridge train --arch critic")
    if not (folder / "classifier.json").is_file():
        raise MuseBridgeError(f"{folder} is not a critic (it has no classifier.json); pass a folder written by "
                              "musebridge train --arch critic")
    if open_critic(folder).vocab != vocab:
        raise MuseBridgeError(f"critic {folder} uses another vocabulary than the model; pass the critic trained for it")


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="A trained model folder (RUN/model).")
@click.option("--critic", type=click.Path(), default=None, help="A critic folder to ship beside it (for ranking).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the packed model.")
@click.option("--card", type=click.Path(dir_okay=False), default=None, help="JSON facts to store in the model's info.")
def pack(model_dir, critic, out, card) -> None:
    """Pack a model for shipping: fp16 safetensors + config + vocabulary (+ critic)."""
    import json

    from musebridge.engine.training.checkpoint import load_model, save_model

    model, vocab, info = load_model(model_dir)
    if card:
        info = {**info, **json.loads(Path(card).read_text())}
    save_model(out, model, vocab, info, half=True)
    if critic:
        from musebridge.engine.training.critic import load_classifier, save_classifier

        crit, cvocab, cinfo = load_classifier(critic)
        if cvocab != vocab:
            raise MuseBridgeError(f"critic {critic} uses another vocabulary than {model_dir}")
        save_classifier(Path(out) / "critic", crit, cvocab, cinfo, half=True)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    click.echo(f"packed {model_dir} into {out}: {size / 1e6:.1f} MB")


@click.command("export")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the graphs.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp32: the CPU default; fp16: for GPUs; int8: dynamic int8 weights.")
@click.option("--check/--no-check", default=True, show_default=True, help="Compare the graphs' logits with PyTorch's.")
def export(model_dir, out, dtype, check) -> None:
    """Write ONNX graphs (step and chunk, KV cache updated in place) and check them against PyTorch."""
    from musebridge.onnx_export.build import export as run_export

    paths = run_export(model_dir, out, dtype)
    for kind, path in paths.items():
        click.echo(f"{path}: {kind} graph, {path.stat().st_size / 1e6:.1f} MB")
    if not check:
        return
    from musebridge.engine.decode.backends import available_backends

    if "torch" not in available_backends():
        click.echo("parity check skipped: PyTorch is not installed (pip install torch==2.13.0)")
        return
    from musebridge.onnx_export.parity import AT_LEAST, parity_check

    with Console(stderr=True).status("checking against PyTorch"):
        r = parity_check(model_dir, out, dtype)
    click.echo(f"parity vs PyTorch over {r['positions']} positions ({r['prompt_tokens']}-token prompt): max |Δlogits| "
               f"prefill {r['prefill']:.2e}, append {r['append']:.2e}, step {r['step']:.2e} "
               f"({r['rel']:.2%} of the logit range); next-token KL {r['kl']:.1e} nats; "
               f"top-1 agrees on {r['top1']:.0%} of calls")
    bounds = ", ".join(f"{k} {'>=' if k in AT_LEAST else '<='} {v:g}" for k, v in r["target"].items())
    if r["misses"]:
        raise MuseBridgeError(f"{dtype} graphs in {out} differ from PyTorch: {'; '.join(r['misses'])}; "
                              "do not ship them, and report it")
    click.echo(f"within the {dtype} target ({bounds})")
