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
        # (tick, family) of each note-on: ticks, not times, so that a row starting at
        # tick 0 (offline) and one at the stream's tick (live) drop an onset from the window
        # on the same step (float times disagreed at the edge, and the two paths parted)
        self.onsets: list[tuple[int, int]] = []
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
        if self.heard is not None and self.heard.voices:  # a joined part in its register, against a player
            self.follow.prefer(self.presence.off_register(), self.follow.texture_nats)
        # strengths, an explicit key and the unnamed families' cost; the followed key's bias is
        # added per step by `follow.key`, which keeps each part's probability of playing
        self.static = self._bias + self.presence.bias
        if old is not None:
            self.presence.carry(old)
        # the density rule's rate per family: the player's parts at theirs, a joined part at its own
        self.rates = dict(self.follow.family_density)
        if self.rates:
            self.rates.update(self.presence.joined_rate)
        # the parts top-p never cuts (`sample_logits`): rests, the player's families, those turned up
        band = set(self.presence.share)  # (those turned up, and the player's band under a floor)
        if self.heard is not None:
            band |= {self.vocab.family_index[f] for f in self.heard.voices if f in self.vocab.family_index}
        # No band (nothing heard, nothing turned up: a clip from silence): nothing to keep, so
        # the nucleus is the whole step's, as it always was
        self.parts = self.follow.fam_starts if band else None
        self.band_parts = self.follow.time_blocks | np.isin(self.follow.fam_starts,
                                                            [self.follow.fam_range[fi][0] for fi in band])

    @property
    def tick(self) -> int:
        return self.dec.tick

    @property
    def time(self) -> float:
        return self.dec.time

    def _density(self, x: np.ndarray) -> None:
        """The density rule, in place on `x`: an explicit `density` moves every note-on
        towards it; the player's own (texture) keeps each family they play at its own rate.

        One rate over all their families let a part take the others' share: on band prompts
        the drums struck 1.4x the prompt's rate while guitar, bass and keys fell to 0.6x
        (24 band test prompts x 2 seeds), and the band came out as a drum solo with pads."""
        self.onsets = [o for o in self.onsets if o[0] > self.dec.tick - self.window_ticks]
        if self.dec.tick - self.start_tick < self.window_ticks:
            return
        if self.shaper.controls.density is None and self.rates:  # the player's own
            counts: dict[int, int] = {}
            for _, fi in self.onsets:
                counts[fi] = counts.get(fi, 0) + 1
            on = self.follow.on_mask
            for fi, target in self.rates.items():
                shift = self.follow.density_weight * density_shift(target, counts.get(fi, 0) / self.window)
                if shift:
                    lo, hi = self.follow.fam_range[fi]
                    x[lo:hi] += shift * on[lo:hi]
            return
        shift = self.shaper.density_bias(len(self.onsets) / self.window)
        if shift:
            x += shift * self.follow.on_mask

    def sample(self, logits: np.ndarray, extra: np.ndarray | None = None) -> int:
        """The next token under controls, grammar, density, follow biases and `extra`."""
        if self.shaper.bias is not self._bias:
            self._follow_controls()
        c = self.shaper.controls
        x = logits.astype(np.float64) / c.temperature + self.static + self.grammar.mask
        if extra is not None:
            x += extra
        self.follow.key(x)
        self._density(x)
        beat_tick = self.dec.tick + self.grid_offset
        groove = self.follow.note_on_shift(beat_tick)
        if groove:
            x += groove * self.follow.on_mask
        self.follow.texture(x, self.dec.tick, self.held)
        self.presence.apply(x, self.dec.tick, self.held, beat_tick)
        return sample_logits(x, c.top_k, c.top_p, self.rng, c.min_p, self.parts, self.band_parts)

    def feed(self, token: int) -> list[Event]:
        """Take `token` as sampled: checked by the guard, then grammar, clock and holds."""
        v = self.vocab
        self.guard.check(token)
        self.grammar.update(token)
        if v.kind[token] == NOTE:
            key = (int(v.family[token]), int(v.pitch[token]))
            if v.vbin[token] > 0:
                self.onsets.append((self.dec.tick, key[0]))
                self.presence.struck(key[0], self.dec.tick)
                if v.has_note_off(key[0]):
                    self.held[key] = self.dec.tick
            else:
                self.held.pop(key, None)
        return self.dec.feed(token)
