"""What the player's MIDI means to the jam: complete messages in, decoded input out.

`InputDecoder` reads the player's channel messages (the input's byte-stream parser has
already made each one whole) the way the jam hears them, with no port and no model:

- which family a channel plays: channel 10 is drums, a channel that sent a program
  change plays that program's family, any other plays `cfg.in_family`;
- note-on/off as `NoteOn`/`NoteOff` and the sustain pedal (CC64) as `Pedal`, in
  timeline beats (`beat_of` turns an arrival time into one; `cfg.quantize` pulls it
  towards `cfg.grid`), each wrapped in `Played`;
- which keys are held: all-notes-off / all-sound-off (CC123/120) releases a channel's,
  and `release_held` lets go of keys whose note-off never came;
- the trigger note or CC (`cfg.trigger_note`, `cfg.trigger_cc`) as `Trigger`, and the
  other CCs through the `CCMap` as `Control`;
- whether a message is the player's at all (`admit`: the input channel, and our own
  notes coming back through a loopback, by the `EchoGuard` the output feeds).

The session feeds it bytes and acts on what comes back; `cfg` is the session's `JamConfig`
(replaced by `set_config`: the input settings apply from the next message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from musebridge.engine.music.events import NoteOff, NoteOn, Pedal
from musebridge.engine.music.families import family_for_program

from .cc_map import CCMap
from .safety import CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF, CC_SUSTAIN, EchoGuard

DRUM_CHANNEL = 9  # MIDI channel 10


@dataclass(frozen=True)
class Played:
    """A note or pedal of the player's, its time in timeline beats."""

    event: NoteOn | NoteOff | Pedal
    assumed: bool = False  # a release the decoder assumed (all-notes-off, a lost note-off), not a key let go


@dataclass(frozen=True)
class Trigger:
    """The trigger note or CC: end the phrase now (call and response) or play now (one-shot)."""

    t: float  # its arrival time


@dataclass(frozen=True)
class Control:
    """A CC the `CCMap` maps: `target` as `CCMap.handle` names it ("temperature",
    "strength:bass", "mode", "panic", "learned", ...) and its value."""

    target: str
    value: Any


Decoded = Played | Trigger | Control


class InputDecoder:
    """The player's messages -> `Played` / `Trigger` / `Control`; counts what it took in."""

    def __init__(self, cfg, beat_of: Callable[[float], float], ccmap: CCMap | None = None,
                 echo: EchoGuard | None = None):
        self.cfg = cfg
        self.beat_of = beat_of  # arrival time -> timeline beat, as played
        self.ccmap = ccmap
        self.echo = echo
        self.programs = [0] * 16  # the last program change per channel (0: none)
        self.held: dict[tuple[int, int], float] = {}  # (channel, pitch) down -> beat pressed
        self.notes_in = 0  # note-ons heard
        self.ignored = 0  # channel messages the jam has no use for
        self.echoes = 0  # our own notes that came back

    # --- on the input's thread ----------------------------------------------------------------
    def admit(self, msg: bytes) -> bool:
        """Is this channel message the player's: on the input channel, and not one of our
        own notes coming back (each note we sent excuses one, see `EchoGuard`)?"""
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if self.cfg.in_channel is not None and ch != self.cfg.in_channel - 1:
            return False
        if kind in (0x80, 0x90) and self.echo is not None and self.echo.is_echo(msg):
            self.echoes += 1
            return False
        return True

    # --- on the worker ----------------------------------------------------------------------------
    def family_of(self, channel: int) -> str:
        if channel == DRUM_CHANNEL:
            return "drums"
        if self.programs[channel]:
            return family_for_program(self.programs[channel], channel).name
        return self.cfg.in_family

    def beat_in(self, t: float) -> float:
        """A played time as a timeline beat, pulled towards the grid by `quantize`."""
        b = self.beat_of(t)
        q = self.cfg.quantize
        if q > 0:
            g = self.cfg.grid
            b += q * (round(b / g) * g - b)
        return max(b, 0.0)

    def decode(self, msg: bytes, t: float) -> list[Decoded]:
        """What one complete channel message, arrived at time `t`, means."""
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == 0xC0 and len(msg) >= 2:
            self.programs[ch] = msg[1]
            return []
        if kind == 0xB0 and len(msg) >= 3:
            return self._cc(ch, msg[1], msg[2], t)
        if kind not in (0x80, 0x90) or len(msg) < 3:
            self.ignored += 1
            return []
        pitch, vel = msg[1], msg[2]
        on = kind == 0x90 and vel > 0
        if on and self.cfg.trigger_note is not None and pitch == self.cfg.trigger_note:
            return [Trigger(t)]
        fam = self.family_of(ch)
        beat = self.beat_in(t)
        if on:
            self.notes_in += 1
            self.held[(ch, pitch)] = beat
            return [Played(NoteOn(beat, fam, pitch, vel))]
        self.held.pop((ch, pitch), None)
        return [Played(NoteOff(beat, fam, pitch))]

    def _cc(self, ch: int, cc: int, value: int, t: float) -> list[Decoded]:
        if self.cfg.trigger_cc is not None and cc == self.cfg.trigger_cc and value >= 64:
            return [Trigger(t)]
        if cc == CC_SUSTAIN:
            return [Played(Pedal(self.beat_in(t), self.family_of(ch), value >= 64))]
        if cc in (CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF):  # the DAW's all-sound-off / all-notes-off: the keys are up
            return self.release_held(self.beat_in(t), channel=ch)
        action = self.ccmap.handle(cc, value) if self.ccmap is not None else None
        return [] if action is None else [Control(*action)]

    def release_held(self, beat: float, channel: int | None = None, older_than: float | None = None) -> list[Played]:
        """Take held keys as released at `beat` (all of them, one channel's, or those pressed
        before `older_than`): their note-offs, as if played."""
        out = []
        for (ch, pitch), b in list(self.held.items()):
            if (channel is None or ch == channel) and (older_than is None or b < older_than):
                del self.held[(ch, pitch)]
                out.append(Played(NoteOff(beat, self.family_of(ch), pitch), assumed=True))
        return out
