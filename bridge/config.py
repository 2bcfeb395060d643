"""Jam settings: one dataclass shared by `musebridge jam`, the app and saved settings.

Every value is checked up front so a bad one is a one-line error naming the setting and
what it accepts, never a failure in the middle of a jam.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from musebridge.engine.music.families import FAMILIES
from musebridge.engine.decode.sampling import ControlError, SamplingControls

MODES = ("call", "accompany", "oneshot")
MODE_NAMES = {"call": "call and response", "accompany": "accompany", "oneshot": "one-shot"}


@dataclass
class JamConfig:
    in_port: str | None = None  # None: a virtual input "MuseBridge In"; else connect by name
    out_port: str | None = None  # None: a virtual output "MuseBridge Out"
    api: str = "auto"
    mode: str = "call"
    bars: float = 2.0  # answer length
    bpm: float = 120.0  # internal clock, used while no MIDI clock arrives
    beats_per_bar: int = 4
    clock: str = "auto"  # auto: follow MIDI clock when it comes; internal: ignore it
    backend: str = "auto"
    model: str | None = None
    style: str | None = None
    controls: SamplingControls = field(default_factory=SamplingControls)
    in_channel: int | None = None  # 1..16, None: all channels
    in_family: str = "piano"  # what the player's channels are heard as (channel 10: drums)
    quantize: float = 0.0  # 0: as played .. 1: fully on the grid
    grid: float = 0.25  # beats (a 16th)
    silence_beats: float = 2.0  # call and response: this much silence ends a phrase
    trigger_note: int | None = None  # a note that ends the phrase (or fires one-shot)
    trigger_cc: int | None = None
    answer_on: str = "bar"  # bar | beat
    lookahead_beats: float = 1.0  # accompany: notes are committed this far ahead
    max_note_beats: float = 8.0
    latency_ms: float | None = None  # send this much early; None: auto (from the clock's arrival spread)
    late_ms: float = 30.0  # a note later than this is dropped, never bunched
    program_changes: bool = True
    # answers (call and response, one-shot): sample up to this many before the answer's bar line, time allowing,
    # and play the one the model folder's critic likes best (opened by start() when this is > 1; without one,
    # or set above 1 later, by the model's own likelihood); 1: play the first as it is sampled
    candidates: int = 1

    def validate(self) -> "JamConfig":
        def bad(name: str, value, want: str) -> ControlError:
            return ControlError(f"{name} {value!r} is invalid: {want}")

        if self.mode not in MODES:
            raise bad("mode", self.mode, f"use one of {', '.join(MODES)}")
        if not 0 < self.bars <= 64:
            raise bad("bars", self.bars, "use a length between 0 and 64 bars")
        if not 20 <= self.bpm <= 400:
            raise bad("bpm", self.bpm, "use a tempo between 20 and 400")
        if not 1 <= self.beats_per_bar <= 16:
            raise bad("beats per bar", self.beats_per_bar, "use 1 to 16")
        if self.clock not in ("auto", "internal", "midi"):
            raise bad("clock", self.clock, "use auto, internal or midi")
        if self.in_channel is not None and not 1 <= self.in_channel <= 16:
            raise bad("input channel", self.in_channel, "use 1 to 16, or leave it out for all")
        if self.in_family not in {f.name for f in FAMILIES}:
            raise bad("input family", self.in_family, f"use one of {', '.join(f.name for f in FAMILIES)}")
        if not 0 <= self.quantize <= 1:
            raise bad("quantize", self.quantize, "use 0 (as played) to 1 (on the grid)")
        if not 0 < self.grid <= 4:
            raise bad("grid", self.grid, "use a grid in beats, e.g. 0.25 for 16ths")
        if not 0.25 <= self.silence_beats <= 64:
            raise bad("silence", self.silence_beats, "use 0.25 to 64 beats")
        for name in ("trigger_note", "trigger_cc"):
            val = getattr(self, name)
            if val is not None and not 0 <= val <= 127:
                raise bad(name.replace("_", " "), val, "use 0 to 127")
        if self.answer_on not in ("bar", "beat"):
            raise bad("answer start", self.answer_on, "use bar or beat")
        if not 0 <= self.lookahead_beats <= 16:
            raise bad("lookahead", self.lookahead_beats, "use 0 to 16 beats")
        if not 0 < self.max_note_beats <= 64:
            raise bad("max note length", self.max_note_beats, "use up to 64 beats")
        if (self.latency_ms is not None and not 0 <= self.latency_ms <= 200) or not 1 <= self.late_ms <= 1000:
            raise bad("latency/late", (self.latency_ms, self.late_ms), "latency 0..200 ms, late 1..1000 ms")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or not 1 <= self.candidates <= 8:
            raise bad("candidates", self.candidates, "use a whole number from 1 (no ranking) to 8")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["controls"] = self.controls.to_dict()
        return d
