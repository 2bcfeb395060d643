"""Option types for numbers the engine has rules for: `--seed -1`, `--temperature nan` or
`--duration inf` are refused while the command line is read, before any model loads, by
the very rule the app and the jam session apply (engine/decode/sampling.py, engine/decode/generate.py),
so the CLI and the session always accept the same values.

A refused value is a `MuseBridgeError`: one line, `error: --seed -1 is invalid: ...`, exit 2.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Callable

import click

from musebridge.errors import MuseBridgeError


class Checked(click.ParamType):
    """`base` (click.INT or click.FLOAT) parsed, then `rule(value, label)` checks it and
    returns the value to use; the rule's ControlError is the one-line error.

    `rule` is a function, or "package.module.function" in musebridge.engine, imported on first use
    so `musebridge --help` does not load numpy.
    """

    def __init__(self, base: click.ParamType, rule: Callable | str):
        self.base, self.rule = base, rule
        self.name = base.name

    def convert(self, value, param, ctx):
        parsed = self.base.convert(value, param, ctx)
        rule = self.rule
        if isinstance(rule, str):
            module, _, name = rule.rpartition(".")
            rule = getattr(importlib.import_module(f"musebridge.engine.{module}"), name)
        label = param.opts[0] if param is not None and param.opts else self.name
        return rule(parsed, label)


def duration_seconds(value: float, label: str = "duration") -> float:
    """How long a jam runs: a finite number of seconds >= 0 (0: until stopped)."""
    if not math.isfinite(value) or value < 0:
        raise MuseBridgeError(f"{label} {value!r} is invalid: use a number of seconds, or 0 (or leave it out) "
                              "to play until Ctrl-C")
    return float(value)



# name, option type (rule), help: the decoding controls every command that samples takes
_DECODING = (
    ("temperature", click.FLOAT, "check_temperature", "Sampling temperature (lower: safer, higher: wilder)."),
    ("top_k", click.INT, "check_top_k", "Keep the k likeliest tokens (0: off)."),
    ("top_p", click.FLOAT, "check_top_p", "Nucleus: keep the likeliest tokens holding this probability (1: off)."),
    ("min_p", click.FLOAT, "check_min_p", "Cut tokens below this share of the likeliest one's probability (0: off)."),
    ("follow_key", click.FLOAT, "check_follow", "Keep to the key heard in the prompt/player: 0 off .. 1 strict."),
    ("follow_groove", click.FLOAT, "check_follow", "Keep to the player's onset grid and swing: 0 off .. 1 strict."),
    ("follow_texture", click.FLOAT, "check_follow",
     "Note lengths and voices near the player's (no droning held notes): 0 off .. 1 strict."),
)


def decoding_options(command: Callable) -> Callable:
    """Add the decoding controls as options (defaults: engine/decode/decoding_defaults.py) and pass
    them to `command` as one dict, `decoding`, ready for `SamplingControls(**decoding)`."""
    from musebridge.engine.decode.decoding_defaults import DECODING_DEFAULTS

    names = [name for name, *_ in _DECODING]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        kwargs["decoding"] = {name: kwargs.pop(name) for name in names}
        return command(*args, **kwargs)

    for name, base, rule, help_text in reversed(_DECODING):
        wrapper = click.option(f"--{name.replace('_', '-')}", name, type=Checked(base, f"decode.sampling.{rule}"),
                               default=DECODING_DEFAULTS[name], show_default=True, help=help_text)(wrapper)
    return wrapper


def dtype_option(command: Callable) -> Callable:
    """--dtype: which ONNX Runtime graphs decode. auto is the runtime's default on the device
    (int8 on a CPU: `ort_runtime.CPU_DTYPE`); fp32 for the float graphs, int8 to ask for them."""
    return click.option("--dtype", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
                        help="ONNX Runtime graphs: auto is the default on this device (int8 on a CPU); fp32 or int8.")(command)


def runtime_dtype(dtype: str, backend: str) -> str | None:
    """`open_runtime`'s dtype for --dtype (None: the runtime's default); the torch backend has none."""
    if dtype != "auto" and backend == "torch":
        raise click.UsageError("--dtype picks ONNX Runtime graphs; use it with --backend onnxruntime (or auto)")
    return None if dtype == "auto" else dtype
