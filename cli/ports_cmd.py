"""`musebridge ports`: which MIDI ports exist, named exactly as --in/--out accept them."""

from __future__ import annotations

import click


@click.command()
@click.option("--api", type=click.Choice(["auto", "alsa", "jack", "coremidi", "windows"]), default="auto",
              show_default=True, help="MIDI API (auto: ALSA if its sequencer exists, else JACK if a server runs).")
def ports(api: str) -> None:
    """List MIDI inputs (for --in) and outputs (for --out)."""
    from musebridge.bridge.ports import api_name, list_ports, resolve_api

    resolved = resolve_api(api)
    inputs, outputs = list_ports(resolved)
    click.echo(f"MIDI API: {api_name(resolved)}")
    for title, names in (("inputs (use with --in)", inputs), ("outputs (use with --out)", outputs)):
        click.echo(f"{title}:")
        for n in names:
            click.echo(f"  {n}")
        if not names:
            click.echo("  (none)")
