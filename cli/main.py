"""The `musebridge` command: one thin shell over the library.

Errors a user can act on (`MuseBridgeError`) print as one line and exit 2; anything
unexpected prints one line too, with `--debug` for the traceback.
"""

from __future__ import annotations

import sys
import traceback

import click

from musebridge import __version__
from musebridge.errors import MuseBridgeError
from .data_cmd import data
from .gui_cmd import gui
from .bench_cmd import bench
from .continuations_cmd import continuations
from .jam_cmd import jam
from .model_cmd import evaluate, export, generate, pack, train
from .ports_cmd import ports


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="musebridge")
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """MuseBridge: a realtime MIDI co-composer that sits beside your DAW."""
    ctx.obj = {"debug": debug}
    if ctx.invoked_subcommand is None:  # bare `musebridge`: the desktop app, where there is a screen
        from musebridge.gui.app import has_display

        if has_display():
            ctx.invoke(gui)
        else:
            click.echo(ctx.get_help())
            click.echo("\n(no display for the app here: musebridge jam runs the bridge headless)")


cli.add_command(data)
cli.add_command(train)
cli.add_command(generate)
cli.add_command(evaluate)
cli.add_command(pack)
cli.add_command(export)
cli.add_command(jam)
cli.add_command(gui)
cli.add_command(ports)
cli.add_command(bench)
cli.add_command(continuations)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI and turn errors into one-line messages."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="musebridge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except MuseBridgeError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # never a traceback to a user
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"error: unexpected {type(e).__name__}: {msg} (run with --debug and report it)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
