"""One answer's decode step: the single path `generate`, the jam and the app sample through.

Before this, the offline loop (`generate.continue_rows`) and the live one
(`bridge/timeline.Timeline.generate`) were two copies that had drifted -- the live one
never applied the density target. A `RowDecoder` owns everything one row of sampling
keeps between tokens: the grammar, the clock (a `StreamDecoder`), the output guard, the
recent onsets behind the density target, the notes it holds and the follow biases
(engine/decode/follow.py). Callers keep only what differs by design: where an answer ends and
whether its first token must be a note.
"""

from __future__ import annotations

import numpy as np

from ..music.events import Event
from .follow import FollowBias, Heard
from .presence import PresenceFloor
from .sampling import Grammar, LogitShaper, OutputGuard, density_shift, sample_logits
from ..music.tokenizer import StreamDecoder
from ..music.vocab import NOTE, Vocabulary, ticks_per_unit

DENSITY_WINDOW_BEATS = 2.0  # the density target reads the last 2 beats (1 s in seconds mode)


class RowDecoder:
    """Sample-and-feed for one row, from `tick` on the stream's clock."""

    def __init__(self, vocab: Vocabulary, shaper: LogitShaper, grammar: Grammar, rng: np.random.Generator,
                 heard: Heard | None = None, tick: int = 0, source: str | None = None,
                 held: dict[tuple[int, int], int] | None = None, grid_offset: int = 0):
        self.vocab = vocab
        self.shaper = shaper
        self.grammar = grammar
        self.rng = rng
        self.dec = StreamDecoder(vocab)
        self.dec.tick = tick
        self.guard = OutputGuard(vocab, source)
        self.heard = heard
        self.grid_offset = grid_offset  # the grid is read on the beat: the beat tick this row's tick 0 falls on
        self._follow_controls()
        self.held: dict[tuple[int, int], int] = dict(held or {})  # (family, pitch) -> onset tick
        # (tick, of a family the player plays): ticks, not times, so that a row starting at
        # tick 0 (offline) and one at the stream's tick (live) drop an onset from the window
        # on the same step (float times disagreed at the edge, and the two paths parted)
        self.onsets: list[tuple[int, bool]] = []
        self.window = DENSITY_WINDOW_BEATS if vocab.config.time_mode == "beats" else 1.0
        self.window_ticks = round(self.window * ticks_per_unit(vocab))
        self.start_tick = tick

    def _follow_controls(self) -> None:
        """The biases of the shaper's controls now (again after `LogitShaper.set_controls`,
        which may come between any two steps)."""
        c = self.shaper.controls
        # an explicit key is strict (shaper.bias masks outside it); following it would add nothing
        key_follow = 0.0 if c.key else c.follow_key
        self.follow = FollowBias(self.vocab, self.heard, key_follow, c.follow_groove, c.follow_texture)
        self._bias = self.shaper.bias
        old = getattr(self, "presence", None)
        self.presence = PresenceFloor(self.vocab, c.strengths, self.follow)
        # strengths, an explicit key and the unnamed families' cost; the followed key's bias is
        # added per step by `follow.key`, which keeps each part's probability of playing
        self.static = self._bias + self.presence.bias
        if old is not None:
            self.presence.carry(old)

    @property
    def tick(self) -> int:
        return self.dec.tick

    @property
    def time(self) -> float:
        return self.dec.time

    def _density_shift(self) -> tuple[float, np.ndarray]:
        """The density rule's logit and the note-ons it applies to: an explicit `density`
        counts every note; the player's own (texture) counts the families they play."""
        self.onsets = [o for o in self.onsets if o[0] > self.dec.tick - self.window_ticks]
        if self.dec.tick - self.start_tick < self.window_ticks:
            return 0.0, self.follow.on_mask
        if self.shaper.controls.density is None and self.follow.target_density is not None:  # the player's own
            rate = sum(counted for _, counted in self.onsets) / self.window
            return self.follow.density_weight * density_shift(self.follow.target_density, rate), self.follow.counted
        return self.shaper.density_bias(len(self.onsets) / self.window), self.follow.on_mask

    def sample(self, logits: np.ndarray, extra: np.ndarray | None = None) -> int:
        """The next token under controls, grammar, density, follow biases and `extra`."""
        if self.shaper.bias is not self._bias:
            self._follow_controls()
        c = self.shaper.controls
        x = logits.astype(np.float64) / c.temperature + self.static + self.grammar.mask
        if extra is not None:
            x += extra
        self.follow.key(x)
        density, applies_to = self._density_shift()
        if density:
            x += density * applies_to
        beat_tick = self.dec.tick + self.grid_offset
        groove = self.follow.note_on_shift(beat_tick)
        if groove:
            x += groove * self.follow.on_mask
        self.follow.texture(x, self.dec.tick, self.held)
        self.presence.apply(x, self.dec.tick, self.held, beat_tick)
        return sample_logits(x, c.top_k, c.top_p, self.rng, c.min_p)

    def feed(self, token: int) -> list[Event]:
        """Take `token` as sampled: checked by the guard, then grammar, clock and holds."""
        v = self.vocab
        self.guard.check(token)
        self.grammar.update(token)
        if v.kind[token] == NOTE:
            key = (int(v.family[token]), int(v.pitch[token]))
            if v.vbin[token] > 0:
                self.onsets.append((self.dec.tick, bool(self.follow.counted[token])))
                self.presence.struck(key[0], self.dec.tick)
                if v.has_note_off(key[0]):
                    self.held[key] = self.dec.tick
            else:
                self.held.pop(key, None)
        return self.dec.feed(token)
