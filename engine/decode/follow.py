"""Following the player: what they play, heard as the decoder's preferences.

A `PlayerProfile` collects the player's notes -- a prompt's, or a jam's as they are
played -- and `heard(now)` reads the last `FOLLOW_WINDOW_BARS` bars of them as a
`Heard`: the pitch classes of their key, the onset grid (swing and triplets included),
how long they hold notes and how many voices each family sounds. Offline and live use
the same rule on the same events, so `generate` and the jam follow a phrase alike.

`FollowBias` turns a `Heard` and the three follow controls into logit biases, each
control going smoothly from off (0) to strict (1): a soft preference of
`FOLLOW_HALF_NATS * s / (1 - s)` nats (2 nats at 0.5, 8 at 0.8) and, at 1, a mask.
The measures it leans on are the continuation benchmark's own (`music_metrics`), so the
decoder prefers exactly what the benchmark calls in key and on the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..music.events import Event, Note, NoteOff, NoteOn, Piece
from ..music.music_metrics import GRID_TOLERANCE, Grid, estimate_grid, estimate_key, pitch_class_profile
from ..music.vocab import NOTE, WAIT, Vocabulary, ticks_per_unit

FOLLOW_WINDOW_BARS = 4  # what "the player's key and groove" means: their last 4 bars
FOLLOW_HALF_NATS = 2.0  # a follow control at 0.5 shifts a logit by this much
PROFILE_WEIGHT = 0.5  # the pitch-class profile's pull, as a share of the key's
KEY_PLAYED_SHARE = 0.05  # a pitch class the player gives this share of their notes' time is in their key
# The drum keys a kit plays when the player plays none (drums joined by their strength):
# kicks, snares, side stick, clap, hi-hats, rides and crashes -- no toms, bells or Latin hand
# percussion, which lifted drums under a piano phrase wandered onto with long fills.
CORE_KIT = frozenset({35, 36, 37, 38, 39, 40, 42, 44, 46, 49, 51, 53, 57, 59})
# A kit's hits are one-shots: their length is a few ticks, and a drum note the model held for
# the beat a pitched part may hold filled the kit's voices, so the drums fell silent after
# their first bar on band prompts. A kit holds a hit at most this long (or twice the player's).
DRUM_HOLD_BEATS = 0.25
NEG = -1e9

# Voices a family sounds at most when the player has not played it: what a part on that
# instrument usually holds at once (a bass line one or two, a pad a chord, a lead a line).
DEFAULT_VOICES = {"piano": 6, "chromatic_percussion": 3, "organ": 6, "guitar": 6, "bass": 2, "strings": 4,
                  "ensemble": 6, "brass": 4, "reed": 2, "pipe": 2, "synth_lead": 2, "synth_pad": 6, "drums": 3}


def follow_nats(strength: float) -> float:
    """The logit shift of a follow control: 0 at 0, growing without bound towards 1."""
    if strength <= 0:
        return 0.0
    if strength >= 1:
        return math.inf
    return FOLLOW_HALF_NATS * strength / (1.0 - strength)


@dataclass(frozen=True)
class Heard:
    """The player's last bars, as what an answer should keep to."""

    key_pcs: frozenset[int] | None  # pitch classes in their key (None: no pitched notes heard)
    grid: Grid | None  # their onset grid (None: no notes heard)
    hold: dict[str, float] = field(default_factory=dict)  # family -> longest sensible hold, beats
    default_hold: float = 4.0
    voices: dict[str, int] = field(default_factory=dict)  # family -> most notes at once
    pcp: np.ndarray | None = None  # their pitch-class profile (time share per pitch class)
    density: float | None = None  # their note-ons per beat
    onsets: dict[str, int] = field(default_factory=dict)  # family -> note-ons struck in the window
    kit: frozenset[int] | None = None  # the drum keys they struck (None: they played no drums)

    def hold_limit(self, family: str) -> float:
        if family == "drums":
            return self.hold.get(family, DRUM_HOLD_BEATS)
        return self.hold.get(family, self.default_hold)

    def voice_limit(self, family: str) -> int:
        return self.voices.get(family, DEFAULT_VOICES.get(family, 4))


class PlayerProfile:
    """The player's notes, from events in time order (`observe`) or a whole prompt."""

    def __init__(self, beats_per_bar: float = 4.0):
        self.beats_per_bar = float(beats_per_bar)
        self.notes: list[Note] = []
        self._open: dict[tuple[str, int], tuple[float, int]] = {}
        self._cache: tuple[int, float, float, Heard] | None = None  # (notes seen, from, until, heard)

    @classmethod
    def of_piece(cls, piece: Piece, beats_per_bar: float = 4.0) -> "PlayerProfile":
        prof = cls(beats_per_bar)
        prof.notes = list(piece.notes)
        return prof

    def observe(self, ev: Event) -> None:
        """One event the player played (NoteOn / NoteOff; anything else is ignored)."""
        self._cache = None
        key = (getattr(ev, "family", None), getattr(ev, "pitch", None))
        if isinstance(ev, NoteOn):
            self._close(key, ev.time)
            self._open[key] = (ev.time, ev.velocity)
        elif isinstance(ev, NoteOff):
            self._close(key, ev.time)
        self._forget(ev.time)

    def observe_all(self, events) -> None:
        for ev in events:
            self.observe(ev)

    def _close(self, key: tuple, t: float) -> None:
        start = self._open.pop(key, None)
        if start is not None:
            self.notes.append(Note(start[0], max(t - start[0], 0.0), key[1], start[1], key[0]))

    def _forget(self, now: float) -> None:
        """Keep memory bounded: notes that ended before the window are never read again."""
        if len(self.notes) > 4096:
            keep = now - 2 * self.window
            self.notes = [n for n in self.notes if n.end >= keep]

    @property
    def window(self) -> float:
        return FOLLOW_WINDOW_BARS * self.beats_per_bar

    def recent(self, now: float) -> list[Note]:
        """Notes that sounded in the window before `now` (held ones cut at `now`)."""
        lo = now - self.window
        out = [n for n in self.notes if n.end > lo and n.start < now]
        out += [Note(s, max(now - s, 0.0), k[1], v, k[0]) for k, (s, v) in self._open.items() if s < now]
        return out

    def heard(self, now: float) -> Heard:
        """What the window before `now` holds. Between the player's notes it changes only when
        a note leaves the window, so the jam reads it during the phrase-ending silence
        (`Timeline.listen_ahead`) and the answer's first token finds it ready."""
        c = self._cache
        if c is not None and c[0] == len(self.notes) and not self._open and c[1] <= now < c[2]:
            return c[3]
        lo = now - self.window
        notes = self.recent(now)
        heard = self._hear(notes, lo)
        if not self._open:  # the same until a note's start or end leaves the window
            edges = [n.end for n in notes] + [n.start for n in notes if n.start >= lo]
            self._cache = (len(self.notes), now, min(edges, default=math.inf) + self.window, heard)
        return heard

    def _hear(self, notes: list[Note], lo: float) -> Heard:
        bar = self.beats_per_bar
        if not notes:
            return Heard(None, None, default_hold=bar)
        key_pcs = None
        pcp = pitch_class_profile(notes)
        if pcp.any():
            key = estimate_key(notes)
            key_pcs = frozenset(key.scale) | frozenset(int(pc) for pc in np.nonzero(pcp >= KEY_PLAYED_SHARE)[0])
        # onsets per beat while they play: from the window's first onset to their last note's end
        onsets = [n.start for n in notes if n.start >= lo]
        span = max(max(n.end for n in notes) - min(onsets, default=lo), 1.0)
        density = len(onsets) / span
        by_family: dict[str, list[Note]] = {}
        for n in notes:
            by_family.setdefault(n.family, []).append(n)
        hold = {f: _hold_limit([n.duration for n in ns], bar, DRUM_HOLD_BEATS if f == "drums" else 1.0)
                for f, ns in by_family.items()}
        voices = {f: max(1, _most_at_once(ns)) for f, ns in by_family.items()}
        struck: dict[str, int] = {}
        for n in notes:
            if n.start >= lo:
                struck[n.family] = struck.get(n.family, 0) + 1
        kit = frozenset(n.pitch for n in notes if n.family == "drums") or None
        return Heard(key_pcs, estimate_grid(notes), hold, _hold_limit([n.duration for n in notes], bar), voices,
                     pcp if pcp.any() else None, density, struck, kit)


def _hold_limit(lengths: list[float], bar: float, shortest: float = 1.0) -> float:
    """Twice the player's long notes (90th percentile), at least `shortest` beats (a beat;
    a kit's `DRUM_HOLD_BEATS`), and no longer than a bar unless they hold notes longer than
    that themselves."""
    p90 = sorted(lengths)[int(0.9 * (len(lengths) - 1))] if lengths else bar / 2  # (np.percentile: 10x slower)
    return max(shortest, min(2.0 * p90, max(bar, p90)))


def _most_at_once(notes: list[Note]) -> int:
    edges = sorted([(n.start, 1) for n in notes] + [(n.end, -1) for n in notes])
    depth = most = 0
    for _, step in edges:
        depth += step
        most = max(most, depth)
    return most


@dataclass(frozen=True)
class _Layout:
    """Where a vocabulary keeps what the biases touch (computed once per vocabulary)."""

    on: np.ndarray  # note-on ids (mask)
    pitched: np.ndarray  # ids of pitched (not drum) note-ons
    drum_ons: np.ndarray  # ids of drum note-ons
    pitched_pc: np.ndarray  # their pitch classes
    wait_ids: np.ndarray
    wait_ticks: np.ndarray
    fam_range: list[tuple[int, int]]  # per family: its note ids [lo, hi), contiguous
    fam_starts: np.ndarray  # first id of each block (families' notes and what lies between)
    fam_sizes: np.ndarray  # ids in each block
    time_blocks: np.ndarray  # the blocks holding rests (mask over blocks)


_LAYOUTS: dict[int, tuple[Vocabulary, _Layout]] = {}


def _layout(v: Vocabulary) -> _Layout:
    hit = _LAYOUTS.get(id(v))
    if hit is not None and hit[0] is v:
        return hit[1]
    on = (v.kind == NOTE) & (v.vbin > 0)
    drums = np.array([f.is_drums for f in v.families])
    pitched = np.nonzero(on & ~drums[np.maximum(v.family, 0)])[0]
    wait_ids = np.nonzero(v.kind == WAIT)[0]
    ranges = []
    for fi in range(len(v.families)):
        ids = np.nonzero((v.family == fi) & (v.kind == NOTE))[0]
        ranges.append((int(ids.min()), int(ids.max()) + 1) if len(ids) else (0, 0))
    # blocks covering every id, for one reduceat per step: each family's notes, and the gaps between
    edges = sorted({0, len(v), *(e for r in ranges if r[1] > r[0] for e in r)})
    starts = np.array(edges[:-1], np.int64)
    drum_ons = np.nonzero(on & drums[np.maximum(v.family, 0)])[0]
    block_of_wait = np.searchsorted(starts, wait_ids, side="right") - 1
    time_blocks = np.zeros(len(starts), bool)
    time_blocks[block_of_wait] = True
    lay = _Layout(on, pitched, drum_ons, v.pitch[pitched] % 12, wait_ids, v.value[wait_ids].astype(np.int64), ranges,
                  starts, np.diff(np.array(edges, np.int64)), time_blocks)
    _LAYOUTS[id(v)] = (v, lay)
    return lay


class FollowBias:
    """A `Heard` and the follow controls as biases for one answer of one vocabulary."""

    def __init__(self, vocab: Vocabulary, heard: Heard | None, key: float, groove: float, texture: float):
        v = self.vocab = vocab
        tpb = v.config.ticks_per_beat if v.config.time_mode == "beats" else 0
        self.heard = heard
        lay = _layout(v)
        on = lay.on
        self.static = np.zeros(len(v), np.float32)
        if heard is not None and heard.key_pcs is not None and key > 0:
            pc_bias = np.full(12, max(-follow_nats(key), NEG))  # outside their key
            inside = np.array(sorted(heard.key_pcs))
            pc_bias[inside] = 0.0
            if heard.pcp is not None and key < 1:  # within the key: their pitch classes as often as they use them
                share = 0.5 * heard.pcp + 0.5 / 12
                pc_bias[inside] += PROFILE_WEIGHT * follow_nats(key) * np.log(share / share.max())[inside]
            self.static[lay.pitched] = pc_bias[lay.pitched_pc]
        # groove: note-ons at a tick of the beat off the player's grid, and drum keys off their kit
        self.off_grid: np.ndarray | None = None
        self.groove_nats = follow_nats(groove)
        if heard is not None and heard.voices and groove > 0 and len(lay.drum_ons):  # (a player heard)
            # The kit is part of the groove: a drummer who plays kick, snare and hats goes on on
            # them. Answers to Groove and band prompts put 15 % of their hits on keys the prompt
            # never struck (toms, bells, congas), the real continuations 1.6 %.
            kit = heard.kit if heard.kit is not None else CORE_KIT
            off_kit = ~np.isin(v.pitch[lay.drum_ons], sorted(kit))
            self.static[lay.drum_ons[off_kit]] = max(-self.groove_nats, NEG)
        # which notes a part plays (its key, its kit), never whether it plays: see `key`
        self.keyed = bool(self.static.any())
        self.key_gain = np.exp(self.static.astype(np.float64))  # 0 where the key masks (strict)
        if heard is not None and heard.grid is not None and groove > 0 and tpb:
            self.off_grid = np.array([heard.grid.distance(t / tpb) > GRID_TOLERANCE for t in range(tpb)])
        self.tpb = tpb
        self.texture_nats = follow_nats(texture)
        self.on_mask = on
        self.wait_ids, self.wait_ticks = lay.wait_ids, lay.wait_ticks
        self.longest_wait = int(lay.wait_ticks.max())
        self.density_weight = min(2.0 * texture, 1.0)
        # The density target is the player's, per family they play: each part at the rate they
        # play it. A part they did not play (a bass or drums pushed in by its strength) joins on
        # top, neither counted nor held back (measured: counted, it squeezed a favoured bass to
        # 2 notes in 4 bars of a piano phrase).
        self.family_density: dict[int, float] = {}  # family -> their note-ons per beat on it
        if heard is not None and texture > 0 and heard.density is not None:
            struck = {v.family_index[f]: n for f, n in heard.onsets.items() if f in v.family_index}
            total = sum(struck.values())
            for f in heard.voices:
                if f in v.family_index:
                    fi = v.family_index[f]
                    self.family_density[fi] = heard.density * struck.get(fi, 0) / total if total else 0.0
        # per family: its note ids [lo, hi) (contiguous), its hold limit (ticks) and voices
        per = self.ticks_per_unit = ticks_per_unit(v)
        self.fam_range = lay.fam_range
        self.fam_starts, self.fam_sizes = lay.fam_starts, lay.fam_sizes
        self.time_blocks = lay.time_blocks
        h = heard if heard is not None else Heard(None, None)
        self.hold_ticks = [h.hold_limit(f.name) * per for f in v.families]
        self.default_hold_ticks = h.default_hold * per  # the player's hold limit over all their notes
        self.voices = [h.voice_limit(f.name) for f in v.families]

    def prefer(self, avoid: np.ndarray, nats: float) -> None:
        """Charge `nats` on the note-ons `avoid` marks, as the key does: the part keeps its
        probability of playing, and it moves to that part's other notes (`key`)."""
        if nats <= 0 or not avoid.any():
            return
        self.static[avoid & self.on_mask] += max(-nats, NEG)
        self.keyed = True
        self.key_gain = np.exp(self.static.astype(np.float64))

    def key(self, x: np.ndarray) -> np.ndarray:
        """Add the key's (and the kit's) bias to `x` in place, keeping each family's note-on probability.

        The key chooses *which* notes a part plays, not *whether* it plays (the kit, which
        drums a kit strikes): the mass its bias takes from a family's notes outside the key
        goes to that family's notes in it.
        A plain bias moved it to rests and other families instead, so a model unsure of the
        pitch (band prompts, where it spreads a part over all twelve pitch classes) thinned
        out as the key got stricter: pitched notes at 0.15 of the real continuation's at
        follow 0.7 (24 band test prompts x 2 seeds), and POP909 answers at 0.50 of its density."""
        if not self.keyed:
            return x
        live = x > NEG / 2
        top = float(x[live].max()) if live.any() else 0.0
        p = np.where(self.on_mask & live, np.exp(np.minimum(x - top, 0.0)), 0.0)
        before = np.add.reduceat(p, self.fam_starts)
        after = np.add.reduceat(p * self.key_gain, self.fam_starts)
        x += self.static
        gain = np.zeros(len(before))
        ok = (after > 0) & (before > after)
        gain[ok] = np.log(before[ok] / after[ok])
        x += np.repeat(gain, self.fam_sizes) * self.on_mask
        return x

    def note_on_shift(self, tick: int) -> float:
        """Extra logit on every note-on at `tick` (the groove)."""
        if self.off_grid is None or not self.off_grid[tick % self.tpb]:
            return 0.0
        return max(-self.groove_nats, NEG)

    def texture(self, x: np.ndarray, tick: int, held: dict[tuple[int, int], int]) -> np.ndarray:
        """Push overdue notes to end and full families to wait, in place on `x`."""
        if self.texture_nats <= 0 or not held:
            return x
        strict = math.isinf(self.texture_nats)
        counts: dict[int, int] = {}
        overdue: list[int] = []
        deadline = math.inf
        for (fi, pitch), onset in held.items():
            counts[fi] = counts.get(fi, 0) + 1
            limit = self.hold_ticks[fi]
            deadline = min(deadline, onset + limit)
            over = (tick + 1 - onset - limit) / max(limit, 1.0)  # due once the shortest rest would pass it
            if over >= 0:
                off = self.vocab.note(fi, pitch, 0)
                if strict:
                    overdue.append(off)
                else:
                    x[off] += self.texture_nats * min(1.0 + over, 3.0)
        if overdue:  # strict: release them now, before anything else
            keep = x[overdue].copy()
            x[:] = NEG
            x[overdue] = np.maximum(keep, 0.0)
            return x
        if deadline - tick < self.longest_wait:  # a rest past a held note's deadline: release it first
            crossing = self.wait_ids[self.wait_ticks > max(deadline - tick, 0)]
            x[crossing] += NEG if strict else -self.texture_nats
        for fi, n in counts.items():
            excess = n - self.voices[fi] + 1
            if excess > 0:
                lo, hi = self.fam_range[fi]
                shift = NEG if strict else -self.texture_nats * excess
                x[lo:hi] += shift * self.on_mask[lo:hi]
        return x

