"""Controls over MIDI: which CC moves which control, with MIDI-learn, saved between runs.

Defaults use CC numbers General MIDI leaves undefined (20-27, 102-114), so a controller
knob sends nothing a synth would also act on. MIDI-learn binds the next CC that arrives
to a control; the map is saved as JSON in the user's config folder. A map saved before a
control existed gets that control's default CC when the map leaves the CC free.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from musebridge.engine.music.families import FAMILIES
from musebridge.engine.decode.sampling import FOLLOW_CONTROLS
from musebridge.errors import MuseBridgeError

from .config import MODES

TARGETS = (["temperature", "top_p", "mode", "panic", "trigger"] + list(FOLLOW_CONTROLS)
           + [f"strength:{f.name}" for f in FAMILIES])
DEFAULTS = {20: "temperature", 21: "top_p", 22: "mode", 23: "panic", 24: "trigger",
            **{25 + i: name for i, name in enumerate(FOLLOW_CONTROLS)},  # 25-27: follow key, groove, texture
            **{102 + i: f"strength:{f.name}" for i, f in enumerate(FAMILIES)}}


def config_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home()))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "musebridge"


class CCMap:
    """CC number -> control; `handle(cc, value)` -> (control, value) to apply, or None."""

    def __init__(self, path: Path | None = None, load: bool = True):
        self.path = path or config_dir() / "midi_map.json"
        self.map: dict[int, str] = dict(DEFAULTS)
        self.learning: str | None = None
        if load and self.path.exists():
            self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            m = {int(k): str(v) for k, v in data["cc"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise MuseBridgeError(f"MIDI map {self.path} is unreadable ({e}); delete it to go back to the defaults") from None
        bad = [v for v in m.values() if v not in TARGETS]
        if bad or any(not 0 <= k <= 127 for k in m):
            raise MuseBridgeError(f"MIDI map {self.path} names unknown controls {bad}; delete it to go back to the defaults")
        have = set(m.values())
        for cc, target in DEFAULTS.items():  # controls newer than the file: their default, if free
            if target not in have and cc not in m:
                m[cc] = target
        self.map = m

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"version": 1, "cc": {str(k): v for k, v in sorted(self.map.items())}}, indent=1))

    def learn(self, target: str) -> None:
        """Bind the next CC that arrives to `target`."""
        if target not in TARGETS:
            raise MuseBridgeError(f"no control {target!r} to learn; use one of {', '.join(TARGETS)}")
        self.learning = target

    def cc_for(self, target: str) -> int | None:
        return next((cc for cc, t in self.map.items() if t == target), None)

    def handle(self, cc: int, value: int) -> tuple[str, object] | None:
        if self.learning is not None:
            target, self.learning = self.learning, None
            self.map = {k: v for k, v in self.map.items() if v != target}
            self.map[cc] = target
            self.save()
            return ("learned", (target, cc))
        target = self.map.get(cc)
        if target is None:
            return None
        x = value / 127.0
        if target == "temperature":
            return target, round(0.2 + 1.8 * x, 3)
        if target == "top_p":
            return target, round(0.5 + 0.5 * x, 3)
        if target == "mode":
            return target, MODES[min(int(x * len(MODES)), len(MODES) - 1)]
        if target in ("panic", "trigger"):
            return (target, True) if value >= 64 else None
        return target, round(x, 3)  # strength:<family> and follow_*: 0..1
