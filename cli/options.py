"""Option types for numbers the engine has rules for: `--seed -1`, `--temperature nan` or
`--duration inf` are refused while the command line is read, before any model loads, by
the very rule the app and the jam session apply (engine/sampling.py, engine/generate.py),
so the CLI and the session always accept the same values.

A refused value is a `MuseBridgeError`: one line, `error: --seed -1 is invalid: ...`, exit 2.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

import click

from .errors import MuseBridgeError


class Checked(click.ParamType):
    """`base` (click.INT or click.FLOAT) parsed, then `rule(value, label)` checks it and
    returns the value to use; the rule's ControlError is the one-line error.

    `rule` is a function, or "module.function" in musebridge.engine, imported on first use
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

