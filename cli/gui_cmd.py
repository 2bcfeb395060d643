"""`musebridge gui` (and bare `musebridge`): the desktop app over the same jam session."""

from __future__ import annotations

import os

import click

from musebridge.errors import MuseBridgeError


@click.command()
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Model folder (default: the shipped model).")
@click.option("--backend", default="auto", show_default=True, help="auto, onnxruntime, torch or tensorrt.")
@click.option("--settings", "settings_path", type=click.Path(dir_okay=False), default=None,
              help="Keep settings in this INI file instead of the user's (portable setups).")
@click.option("--demo", is_flag=True, help="Open with a demo jam loaded (no MIDI ports).")
@click.option("--screenshot", type=click.Path(dir_okay=False), default=None,
              help="Render the window with the demo jam to this PNG and exit.")
def gui(model_dir, backend, settings_path, demo, screenshot) -> None:
    """Open the MuseBridge window: ports, mode, instruments, live piano roll, clips."""
    from musebridge.gui.app import has_display

    if screenshot:
        if not has_display():  # a PNG needs no screen
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from musebridge.gui.app import screenshot as shoot

        path = shoot(screenshot, model_dir, backend)
        click.echo(f"wrote {path}")
        return
    if not has_display():
        raise MuseBridgeError("no display to open the window on (no $DISPLAY or $WAYLAND_DISPLAY); "
                              "run the headless bridge with musebridge jam, or render with musebridge gui --screenshot PATH")
    from musebridge.gui.app import run

    code = run(model_dir, backend, settings_path, demo)
    if code:
        raise click.exceptions.Exit(code)
