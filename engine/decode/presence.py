"""Every part keeps playing: the presence floor under the player's band and the strengths.

Two measured failures of the shipped model share one cure.

*A part the user turns up that the player does not play.* A strength above 0.5 is a logit
bias on the family's note-ons (`sampling.STRENGTH_SCALE`). After four bars of piano the
model gives a bass note-on so little probability that even the strength's 8 nats left it
silent: a bass part in 1 of 4 seeds, 0 to 7 bass notes in 4 bars (strength probe, piano
prompts of the test split). A producer who pushes the bass slider to the top expects a
bass line.

*A part of the player's band that the model drops.* On band prompts (drums, bass, keys,
strings) the model trained on Groove's drums-alone performances often went on with the
drums alone: 23 of 48 answers (24 band test prompts x 2 seeds) played under 0.3 of the
real continuation's pitched notes (the median answer 0.35); with the floor 10 of 48 (0.50).

So each part gets a floor under its share of the note-on probability at a step:

* a favoured family the player does not play, while it rests (holds nothing and struck
  nothing for `REST_BEATS`): `PRESENCE_SHARE * (2s - 1)` (half at strength 1);
* a family of the player's band (two or more families, texture followed), while it
  strikes fewer notes over the last `RATE_WINDOW_BEATS` than their part does and holds
  fewer notes than their part's voices: its share of the player's onsets.

The floor is relative to the note-ons the model would make at that step, so a part comes in
where the music has onsets -- on the grid, since the groove and key rules have already
shaped the logits it reads -- and it never turns rests into notes: one family alone (a folk
line, a piano, a drum kit) is never touched.

A lifted note could be held for ever (lifted into a bass note, the model held it to the end
of the clip; lifted band parts piled into walls of held notes, polyphony 1.8x the real
continuation's), so a part under a floor ends its notes by a hold limit: a joined part the
player's (`Heard.default_hold`), a part of theirs its own. A joined part also keeps to the
player's grid when the groove is followed (drums learnt from Groove's human timing landed
0.63 of their hits on a piano phrase's grid) and strikes no more notes at one instant than
the part sounds at once (`follow.DEFAULT_VOICES`: a kit 3; lifted drums under a piano phrase
otherwise struck walls of a dozen drum keys at a time, as if they were piano chords). It has a
rate of its own (`JOINED_RATE`, which the row's density rule pulls it towards) with a ceiling
over the last beat, and a bass keeps to a bass register (`JOINED_REGISTER`, charged through
`FollowBias.prefer`, so the bass keeps its probability of playing).

And a family neither played nor asked for pays the texture's nats on each note-on: on band
prompts the model spread a third of its notes over families the band did not have.
"""

from __future__ import annotations

import math

import numpy as np

from ..music.vocab import Vocabulary
from .follow import FollowBias
from .sampling import NEG

PRESENCE_SHARE = 0.5  # at strength 1: the share of note-on probability a silent favoured part gets
REST_BEATS = 0.5  # a joined part that struck within this many beats (or holds a note) is playing
RATE_WINDOW_BEATS = 4.0  # a part of the player's band is behind when, over the last 4 beats,
BEHIND = 1.0  # ... it struck fewer notes than the player's part strikes in that time (measured: at half
# their rate, band answers kept 0.39 of the real continuation's pitched notes; at their rate 0.50)
MAX_SHARE = 0.95
# A joined part's rate (note-ons per beat): a kit at the median of Groove's performances
# (4.5 a beat on its test split); any other part at the player's own rate. Free, joined drums
# whose hits no longer filled their voices struck 14 a beat under piano phrases.
JOINED_RATE = {"drums": 4.5}
JOINED_CEILING = 1.5  # ... and at most this many times that over the last `CEILING_BEATS`: the
# density rule's soft pull (-1 nat at three times the rate) did not hold back a part turned up
# by 5-8 nats, and joined drums still struck 13-15 a beat
CEILING_BEATS = 1.0  # (over 4 beats the kit struck in bursts: a bar's worth of hits, then silence)
# Where a joined part plays when nothing the player plays says where (MIDI pitches): a bass
# turned up under a piano phrase followed the piano up to the bass family's top (67), where the
# band data's basses play 28-46 (1st to 99th percentile) and a bass guitar's line stays below G3.
JOINED_REGISTER = {"bass": (28, 55)}
NEG_HALF = NEG / 2  # logits below this are masked


class PresenceFloor:
    """For one answer: the parts to keep playing, their floors, and when each joined part last struck."""

    def __init__(self, vocab: Vocabulary, strengths: dict[str, float], follow: FollowBias):
        self.vocab = vocab
        self.on = follow.on_mask
        self.fam_range = follow.fam_range
        self.hold_ticks = follow.default_hold_ticks  # a joined part's notes: the player's hold limit
        self.family_hold = follow.hold_ticks  # a part of theirs: that part's own limit
        self.voices = follow.voices
        self.drums = vocab.family_index.get("drums")
        self.wait_ids, self.wait_ticks = follow.wait_ids, follow.wait_ticks
        self.off_grid, self.tpb = follow.off_grid, follow.tpb  # None: no grid heard, or groove not followed
        per = follow.ticks_per_unit
        self.rest_ticks = REST_BEATS * per
        self.rate_window = RATE_WINDOW_BEATS * per
        self.ceiling_window = CEILING_BEATS * per
        heard = follow.heard
        played = set(heard.voices) if heard is not None else set()
        self.share: dict[int, float] = {}  # family -> its floor
        self.joined: set[int] = set()  # favoured families the player does not play
        self.last_onset: dict[int, float] = {}
        self.instant: tuple[int, dict[int, int]] = (-1, {})  # (tick, joined family -> notes struck at it)
        self.expected: dict[int, float] = {}  # a part of the player's band: its onsets in a full window
        self.recent: dict[int, list[int]] = {}  # ... and the ticks it struck at, within the window
        self.first_tick: int | None = None
        self.joined_rate: dict[int, float] = {}  # joined family -> its note-ons per beat (the density rule's)
        self.joined_recent: dict[int, list[int]] = {}  # ... and the ticks it struck at, within the window
        density = heard.density if heard is not None else None
        for fam, s in strengths.items():
            if s > 0.5 and fam not in played and fam in vocab.family_index:
                fi = vocab.family_index[fam]
                self.share[fi] = min(PRESENCE_SHARE * (2.0 * s - 1.0), MAX_SHARE)
                self.joined.add(fi)
                if density is not None:
                    self.joined_rate[fi] = JOINED_RATE.get(fam, density)
                    self.joined_recent[fi] = []
        # a family neither played nor asked for: each of its note-ons costs the texture's nats
        self.bias = np.zeros(len(vocab))
        if played and follow.texture_nats > 0:
            asked = played | {f for f, s in strengths.items() if s > 0.5}
            outside = np.isin(vocab.family, [fi for f, fi in vocab.family_index.items() if f not in asked])
            self.bias[outside & self.on] = max(-follow.texture_nats, NEG)
        if heard is not None and follow.density_weight > 0 and len(heard.onsets) > 1:
            total = sum(heard.onsets.values())
            for fam, n in heard.onsets.items():
                fi = vocab.family_index.get(fam)
                if fi is None or fi in self.share or strengths.get(fam, 0.5) <= 0:
                    continue
                self.share[fi] = min(follow.density_weight * n / total, MAX_SHARE)
                self.expected[fi] = (heard.density or 0.0) * n / total * RATE_WINDOW_BEATS
                self.recent[fi] = []

    def off_register(self) -> np.ndarray:
        """The note ids of joined parts outside their register (`JOINED_REGISTER`)."""
        out = np.zeros(len(self.vocab), bool)
        for fi in self.joined:
            reg = JOINED_REGISTER.get(self.vocab.families[fi].name)
            if reg is not None:
                lo, hi = self.fam_range[fi]
                pitch = self.vocab.pitch[lo:hi]
                out[lo:hi] = (pitch < reg[0]) | (pitch > reg[1])
        return out

    def __bool__(self) -> bool:
        return bool(self.share)

    def carry(self, old: "PresenceFloor") -> None:
        """What an earlier floor of the same answer saw (controls change between steps)."""
        self.last_onset, self.first_tick = old.last_onset, old.first_tick
        for fi in self.recent:
            self.recent[fi] = list(old.recent.get(fi, []))
        for fi in self.joined_recent:
            self.joined_recent[fi] = list(old.joined_recent.get(fi, []))

    def struck(self, family: int, tick: int) -> None:
        self.last_onset[family] = tick
        if family in self.joined:
            if self.instant[0] != tick:
                self.instant = (tick, {})
            self.instant[1][family] = self.instant[1].get(family, 0) + 1
        if family in self.recent:
            self.recent[family].append(tick)
        if family in self.joined_recent:
            self.joined_recent[family].append(tick)

    def _behind(self, fi: int, tick: int) -> bool:
        """A part of the player's band striking under `BEHIND` times their part's rate (over the
        window, or the time since the answer began if shorter)."""
        since = tick - self.rate_window
        ticks = self.recent[fi] = [t for t in self.recent[fi] if t > since]
        span = min(tick - self.first_tick, self.rate_window) / self.rate_window
        return len(ticks) < BEHIND * self.expected[fi] * max(span, 1.0 / RATE_WINDOW_BEATS)

    def apply(self, x: np.ndarray, tick: int, held: dict[tuple[int, int], int], beat_tick: int | None = None) -> np.ndarray:
        """Lift each silent part's note-ons to its share of the note-on mass, in place.
        `beat_tick`: `tick` on the beat's clock, where the player's grid is read (default `tick`)."""
        if not self.share:
            return x
        if self.first_tick is None:
            self.first_tick = tick
        if self._bound(x, tick, held, tick if beat_tick is None else beat_tick):
            return x
        holding: dict[int, int] = {}
        for fi, _ in held:
            holding[fi] = holding.get(fi, 0) + 1
        silent = [fi for fi in self.share if (fi in self.recent and holding.get(fi, 0) < self.voices[fi]
                                              and self._behind(fi, tick))
                  or (fi in self.joined and fi not in holding
                      and tick - self.last_onset.get(fi, -math.inf) >= self.rest_ticks)]
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
            if mine <= 0.0:  # masked (muted, off the grid, outside a strict key): nothing to lift
                continue
            q = self.share[fi]
            want = q * (total - mine) / (1.0 - q)  # its mass once it holds share q of the note-ons
            if want > mine:
                shift = math.log(want / mine)
                x[lo:hi] += shift * live[lo:hi]
                p_on[lo:hi] *= math.exp(shift)
                total += want - mine
        return x

    def limit(self, fi: int) -> float:
        """A joined part holds notes as long as the player's do (a kit: as its hits, `Heard.hold_limit`)."""
        return self.hold_ticks if fi in self.joined and fi != self.drums else self.family_hold[fi]

    def _bound(self, x: np.ndarray, tick: int, held: dict[tuple[int, int], int], beat_tick: int) -> bool:
        """The parts' hold limits and a joined part's grid; True when only a note-off may come next."""
        mine = [(fi, pitch, onset) for (fi, pitch), onset in held.items() if fi in self.share]
        due = [self.vocab.note(fi, pitch, 0) for fi, pitch, onset in mine if tick + 1 - onset >= self.limit(fi)]
        if due:  # its note has sounded as long as the player's do: release it before anything else
            keep = np.maximum(x[due], 0.0)
            x[:] = NEG
            x[due] = keep
            return True
        if mine:  # and no rest may carry it past that
            deadline = min(onset + self.limit(fi) for fi, _, onset in mine)
            x[self.wait_ids[self.wait_ticks > max(deadline - tick, 1)]] = NEG
        off_grid = self.off_grid is not None and self.off_grid[beat_tick % self.tpb]
        struck = self.instant[1] if self.instant[0] == tick else {}
        since = tick - self.ceiling_window
        for fi in self.joined:  # off the player's grid, as many notes at once as the part sounds, or past its rate: no more
            if fi in self.joined_recent:
                recent = self.joined_recent[fi] = [t for t in self.joined_recent[fi] if t > since]
                over = len(recent) >= JOINED_CEILING * self.joined_rate[fi] * CEILING_BEATS
            else:
                over = False
            if off_grid or over or struck.get(fi, 0) >= self.voices[fi]:
                lo, hi = self.fam_range[fi]
                x[lo:hi][self.on[lo:hi]] = NEG
        return False
