"""`musebridge jam`: the realtime bridge, headless. A thin shell over `JamSession`."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click

from musebridge.engine.decode.backends import BACKENDS
from musebridge.errors import MuseBridgeError
from .options import Checked, decoding_options, duration_seconds


@click.command()
@click.option("--in", "in_port", default=None, help="Connect to this MIDI input port (default: a virtual 'MuseBridge In').")
@click.option("--out", "out_port", default=None, help="Connect to this MIDI output port (default: a virtual 'MuseBridge Out').")
@click.option("--api", type=click.Choice(["auto", "alsa", "jack", "coremidi", "windows"]), default="auto", show_default=True,
              help="MIDI API (auto: the platform's; JACK when there is no ALSA sequencer).")
@click.option("--mode", type=click.Choice(["call", "accompany", "oneshot"]), default="call", show_default=True,
              help="call: answer each phrase; accompany: play along; oneshot: M bars on demand (Enter or the trigger).")
@click.option("--bars", type=float, default=2, show_default=True, help="Answer length in bars.")
@click.option("--bpm", type=float, default=120, show_default=True, help="Internal tempo, used while no MIDI clock arrives.")
@click.option("--beats-per-bar", type=int, default=4, show_default=True)
@click.option("--clock", type=click.Choice(["auto", "internal", "midi"]), default="auto", show_default=True)
@click.option("--backend", default="auto", show_default=True, help=f"auto, {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}.")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--style", default=None, help="Style label from the model's vocabulary.")
@click.option("--strength", "strengths", multiple=True, metavar="FAMILY=S", help="Instrument strengths, e.g. bass=1,drums=0.")
@click.option("--seed", type=Checked(click.INT, "decode.sampling.check_seed"), default=None, help="Same seed, same answers (0 to 2^32-1).")
@click.option("--channel", type=int, default=None, help="Listen on this channel only (1-16; default all).")
@click.option("--in-family", default="piano", show_default=True, help="What the played notes are heard as (channel 10: drums).")
@click.option("--quantize", type=float, default=0.0, show_default=True, help="0 as played .. 1 on the 16th grid.")
@click.option("--silence", type=float, default=2.0, show_default=True, help="Beats of silence that end a phrase.")
@click.option("--trigger-note", type=int, default=None, help="A note that ends the phrase / fires one-shot.")
@click.option("--trigger-cc", type=int, default=None, help="A CC (value >= 64) that ends the phrase / fires one-shot.")
@click.option("--answer-on", type=click.Choice(["bar", "beat"]), default="bar", show_default=True)
@click.option("--lookahead", type=float, default=1.0, show_default=True, help="accompany: beats committed ahead.")
@click.option("--candidates", type=int, default=1, show_default=True,
              help="Rank up to N answers by the critic when there is time before the bar line.")
@click.option("--latency-ms", type=float, default=None,
              help="Send this much early (output latency; default: estimated from the MIDI clock's arrival spread).")
@click.option("--log-json", is_flag=True, help="One JSON object per line on stdout (ready, phrase_end, answer_start, ...).")
@click.option("--duration", type=Checked(click.FLOAT, duration_seconds), default=0.0,
              help="Stop after this many seconds (0, the default: until Ctrl-C).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Write every answer to this folder as a .mid (with its seed and settings).")
@decoding_options
def jam(in_port, out_port, api, mode, bars, bpm, beats_per_bar, clock, backend, model_dir, style, strengths, decoding,
        seed, channel, in_family, quantize, silence, trigger_note, trigger_cc, answer_on, lookahead, candidates,
        latency_ms, log_json, duration, save_dir) -> None:
    """Play along with the model on MIDI ports, following the DAW's clock."""
    from musebridge.bridge.config import JamConfig
    from musebridge.bridge.session import JamSession, json_listener
    from musebridge.engine.training.checkpoint import DEFAULT_MODEL, load_vocab
    from musebridge.engine.decode.sampling import SamplingControls, parse_strengths

    vocab = load_vocab(model_dir or DEFAULT_MODEL)
    if style is not None and style not in vocab.styles:
        raise MuseBridgeError(f"style {style!r} is not in the model's vocabulary; see musebridge generate --list-styles")
    parsed: dict[str, float] = {}
    for s in strengths:
        parsed.update(parse_strengths(s, vocab))
    cfg = JamConfig(in_port=in_port, out_port=out_port, api=api, mode=mode, bars=bars, bpm=bpm, beats_per_bar=beats_per_bar,
                    clock=clock, backend=backend, model=model_dir, style=style,
                    controls=SamplingControls(**decoding, seed=seed, strengths=parsed),
                    in_channel=channel, in_family=in_family, quantize=quantize, silence_beats=silence,
                    trigger_note=trigger_note, trigger_cc=trigger_cc, answer_on=answer_on, lookahead_beats=lookahead,
                    latency_ms=latency_ms, candidates=candidates)
    listener = json_listener(sys.stdout) if log_json else _human_listener
    if save_dir:
        listener = _saving(listener, Path(save_dir), lambda: session, beats_per_bar, model_dir, log_json)
    session = JamSession(cfg, listener=listener)
    done = threading.Event()

    def on_signal(signum, frame):  # SIGTERM like Ctrl-C: release every note, then exit
        done.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        session.start()
        if mode == "oneshot" and sys.stdin is not None and sys.stdin.isatty():
            click.echo("press Enter for an answer, q then Enter to quit", err=True)
        threading.Thread(target=_stdin_commands, args=(session, done), daemon=True).start()
        t_end = time.monotonic() + duration if duration > 0 else None
        while not done.wait(0.1):
            if t_end is not None and time.monotonic() >= t_end:
                break
    finally:
        lost = session.ports.server_lost  # read before stop() closes the ports
        session.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if lost:
        raise MuseBridgeError("the JACK server stopped during the jam and never came back: the MIDI ports were lost "
                              "(notes it was playing may still sound in the synth); start JACK and run the jam again")


def _saving(listener, folder: Path, session_of, beats_per_bar: int, model: str | None, quiet: bool):
    """`listener`, plus: each finished answer written to `folder` as a .mid, off the jam's
    worker thread. Names start with the time, so a second jam never overwrites the first."""
    from musebridge.bridge.clips import clip_from_answer
    from musebridge.bridge.jam_record import AnswerRecord

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MuseBridgeError(f"cannot use --save {folder} ({e.strerror or e}); choose a folder you can write") from None

    def write(rec: AnswerRecord) -> None:
        try:
            clip = clip_from_answer(rec, beats_per_bar, model=model)
            path = clip.export(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{clip.file_name()}")
            if not quiet:
                click.echo(f"saved {path}", err=True)
        except Exception as e:  # a full disk must not stop the music: say it, go on
            click.echo(f"error: could not save answer {rec.tag} to {folder} ({e})", err=True)

    def on_event(rec: dict) -> None:
        listener(rec)
        if rec.get("event") == "answer_end":
            answer = session_of().record.answer(rec.get("tag"))
            if answer is not None:
                threading.Thread(target=write, args=(answer,), name="musebridge-save", daemon=False).start()

    return on_event


def _stdin_commands(session, done: threading.Event) -> None:
    """Lines on stdin: empty or 'go' = trigger, 'panic', 'cancel', 'mode NAME', 'q' = quit."""
    if sys.stdin is None:
        return
    for line in sys.stdin:
        cmd = line.strip().lower()
        if cmd in ("", "go", "trigger"):
            session.trigger()
        elif cmd == "panic":
            session.panic()
        elif cmd == "cancel":
            session.cancel()
        elif cmd.startswith("mode "):
            try:
                session.set_mode(cmd.split(None, 1)[1])
            except ValueError as e:
                click.echo(f"error: {e}", err=True)
        elif cmd in ("q", "quit", "exit"):
            done.set()
            return


def _human_listener(rec: dict) -> None:
    ev = rec["event"]
    if ev == "ready":
        click.echo(f"listening on {rec.get('input')} -> {rec.get('output')} ({rec.get('mode')}, {rec.get('backend')}, "
                   f"clock {rec.get('clock')} {rec.get('bpm')} BPM); Ctrl-C to stop", err=True)
    elif ev == "answer_start":
        click.echo(f"answer {rec['tag']}: first token {rec.get('first_token_ms')} ms after the phrase, "
                   f"on the beat within {rec.get('error_ms')} ms", err=True)
    elif ev in ("error", "panic", "mode", "transport", "midi_learn", "port", "port_lost", "port_restored"):
        click.echo(f"{ev}: {', '.join(f'{k}={v}' for k, v in rec.items() if k not in ('event', 't'))}", err=True)
    elif ev == "stopped":
        j = rec.get("jitter", {})
        click.echo(f"stopped: {rec.get('answers')} answers, output jitter p50 {j.get('p50_ms', 0):.2f} ms, "
                   f"p99 {j.get('p99_ms', 0):.2f} ms; every note released", err=True)
