"""What the app remembers between runs (QSettings), as one flat dict with defaults.

Jam settings map one to one onto `JamConfig` and `SamplingControls` (whose defaults are
the app's: never written here twice); the rest is the window (geometry, splitters) and the
mixer's mutes.
"""

from __future__ import annotations

import json

from PyQt6.QtCore import QSettings

from musebridge.bridge.config import JamConfig
from musebridge.engine.decode.sampling import FOLLOW_CONTROLS, SamplingControls

CONTROL_KEYS = ("temperature", "top_p", "min_p", "seed", *FOLLOW_CONTROLS)  # saved as they are; strengths and mutes apart
_CONTROLS = SamplingControls()
DEFAULTS: dict = {
    "in_port": None, "out_port": None, "api": "auto", "mode": "call", "style": None, "bars": 2.0, "quantize": 0.0,
    "bpm": 120.0, "silence_beats": 2.0, "in_family": "piano", **{k: getattr(_CONTROLS, k) for k in CONTROL_KEYS},
    "strengths": {}, "mutes": [], "variations": 4,
}
JSON_KEYS = {"strengths", "mutes", "in_port", "out_port", "style", "seed"}
FLOAT_KEYS = set(CONTROL_KEYS) - JSON_KEYS  # numbers, whatever their default is written as


def open_settings(path: str | None = None) -> QSettings:
    """The user's settings, or an INI file at `path` (tests, portable setups)."""
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("MuseBridge", "MuseBridge")


def load(qs: QSettings) -> dict:
    out = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        raw = qs.value(f"jam/{key}")
        if raw is None:
            continue
        try:
            if key in JSON_KEYS:
                out[key] = json.loads(raw)
            elif key in FLOAT_KEYS or isinstance(default, float):
                out[key] = float(raw)
            elif isinstance(default, int):
                out[key] = int(raw)
            else:
                out[key] = str(raw)
        except (TypeError, ValueError):
            pass  # a damaged value: its default
    return out


def save(qs: QSettings, values: dict) -> None:
    for key, value in values.items():
        if key in DEFAULTS:
            qs.setValue(f"jam/{key}", json.dumps(value) if key in JSON_KEYS else value)


def to_config(v: dict, model: str | None = None, backend: str = "auto") -> JamConfig:
    """The saved values as a checked JamConfig; a value that no longer validates falls back to its default."""
    strengths = {f: (0.0 if f in v["mutes"] else s) for f, s in v["strengths"].items()}
    for f in v["mutes"]:
        strengths[f] = 0.0
    controls = SamplingControls()
    for key, value in [*((k, v[k]) for k in CONTROL_KEYS), ("strengths", strengths)]:
        try:  # one value that no longer validates falls back alone
            controls = controls.with_(**{key: value})
        except Exception:
            pass
    cfg = JamConfig(in_port=v["in_port"], out_port=v["out_port"], api=v["api"], mode=v["mode"], bars=v["bars"],
                    bpm=v["bpm"], model=model, backend=backend, style=v["style"], controls=controls,
                    in_family=v["in_family"], quantize=v["quantize"], silence_beats=v["silence_beats"])
    try:
        return cfg.validate()
    except Exception:
        return JamConfig(model=model, backend=backend, controls=controls)
