"""A part the user turns up joins in: the presence floor behind instrument strengths.

A strength above 0.5 is a logit bias on the family's note-ons (`sampling.STRENGTH_SCALE`),
and with a family the player plays that is enough. A family they do *not* play is another
matter: after four bars of piano the model gives a bass note-on so little probability that
even the strength's 8 nats leave it silent (measured on the shipped model, piano prompts of
the test split, `--strength bass=1`: a bass part in 1 of 4 seeds, 0 to 7 bass notes in
4 bars). A producer who pushes the bass slider to the top expects a bass line.

So while such a family is silent -- it holds no note and struck none for `REST_BEATS` --
its note-ons get at least `PRESENCE_SHARE * (2s - 1)` of the note-on probability at that
step: a bass at strength 1 takes half of the onsets the music makes while it rests, on
the pitches the model (and the key it follows) likes best for a bass there. The floor is
relative to the note-ons the model would make at that step, so the part comes in where the
music has onsets -- on the grid, since the groove and key rules have already shaped the
logits it reads -- and adds to them rather than taking their place. Once the part plays,
the model carries its line, with one bound: a note of such a part ends by the hold limit of
the player's own notes (`Heard.default_hold`: twice their long notes, at least a beat).
Without it the same model, having been lifted into a bass note, held it to the end of the
clip (16 beats), and a held drone is not the bass line the slider asked for. And it keeps to the
player's grid: off it, its note-ons are shut (when the groove is followed at all). The
drums the model learned from Groove's human timing otherwise landed 0.63 of their hits
on a piano phrase's grid (strength probe, 6 test prompts x 4 seeds). Families the player
plays are left alone.
"""

from __future__ import annotations

import math

import numpy as np

from ..music.vocab import Vocabulary
from .follow import FollowBias

PRESENCE_SHARE = 0.5  # at strength 1: the share of note-on probability a silent favoured part gets
REST_BEATS = 0.5  # a part that struck within this many beats (or holds a note) is playing
NEG = -1e9  # as sampling.NEG: nothing can be sampled from it
NEG_HALF = NEG / 2  # logits below this are masked


class PresenceFloor:
    """For one answer: the favoured families the player does not play, and their floor."""

    def __init__(self, vocab: Vocabulary, strengths: dict[str, float], follow: FollowBias):
        self.vocab = vocab
        self.on = follow.on_mask
        self.fam_range = follow.fam_range
        self.hold_ticks = follow.default_hold_ticks
        self.wait_ids, self.wait_ticks = follow.wait_ids, follow.wait_ticks
        self.rest_ticks = REST_BEATS * follow.ticks_per_unit
        self.off_grid, self.tpb = follow.off_grid, follow.tpb  # None: no grid heard, or groove not followed
        heard = follow.heard
        played = set(heard.voices) if heard is not None else set()
        self.share: dict[int, float] = {}
        for fam, s in strengths.items():
            if s > 0.5 and fam not in played and fam in vocab.family_index:
                self.share[vocab.family_index[fam]] = min(PRESENCE_SHARE * (2.0 * s - 1.0), 0.95)
        self.last_onset: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.share)

    def struck(self, family: int, tick: int) -> None:
        self.last_onset[family] = tick

    def apply(self, x: np.ndarray, tick: int, held: dict[tuple[int, int], int], beat_tick: int | None = None) -> np.ndarray:
        """Lift each silent favoured family's note-ons to its share of the note-on mass, in place.
        `beat_tick`: `tick` on the beat's clock, where the player's grid is read (default `tick`)."""
        if not self.share:
            return x
        mine = [(fi, pitch, onset) for (fi, pitch), onset in held.items() if fi in self.share]
        due = [self.vocab.note(fi, pitch, 0) for fi, pitch, onset in mine if tick + 1 - onset >= self.hold_ticks]
        if due:  # its note has sounded as long as the player's do: release it before anything else
            keep = np.maximum(x[due], 0.0)
            x[:] = NEG
            x[due] = keep
            return x
        if mine:  # and no rest may carry it past that
            deadline = min(onset for _, _, onset in mine) + self.hold_ticks
            x[self.wait_ids[self.wait_ticks > max(deadline - tick, 1)]] = NEG
        if self.off_grid is not None and self.off_grid[(tick if beat_tick is None else beat_tick) % self.tpb]:
            for fi in self.share:  # off the player's grid: not a note of this part
                lo, hi = self.fam_range[fi]
                x[lo:hi][self.on[lo:hi]] = NEG
            return x
        holding = {fi for fi, _, _ in mine}
        silent = [fi for fi in self.share if fi not in holding
                  and tick - self.last_onset.get(fi, -math.inf) >= self.rest_ticks]
        if not silent:
            return x
        live = self.on & (x > NEG_HALF)
        if not live.any():
            return x
        top = float(x[live].max())
        p_on = np.where(live, np.exp(np.minimum(x - top, 0.0)), 0.0)
        total = float(p_on.sum())
        for fi in silent:
            lo, hi = self.fam_range[fi]
            mine = float(p_on[lo:hi].sum())
            if mine <= 0.0:  # masked (muted by the key, the grammar): nothing to lift
                continue
            q = self.share[fi]
            want = q * (total - mine) / (1.0 - q)  # its mass once it holds share q of the note-ons
            if want > mine:
                shift = math.log(want / mine)
                x[lo:hi] += shift * live[lo:hi]
                p_on[lo:hi] *= math.exp(shift)
                total += want - mine
        return x
