"""Sampling controls and the grammar that keeps generated tokens valid MIDI.

Everything here works on numpy logits, so every runtime (torch, ONNX Runtime,
TensorRT) samples the same way. Controls can change between any two steps:
`LogitShaper.set_controls` rebuilds the static bias in well under a millisecond.

Instrument strengths are MuseNet's "strong suggestions" made continuous: a logit bias
on a family's note-ons of `STRENGTH_SCALE * (2s - 1)` nats -- 0.5 is neutral, 1 strongly
favours the family -- and exactly 0 masks it. Note-offs are never biased, so a muted
family can still release what it holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from musebridge.errors import ModelOutputError, MuseBridgeError

from .decoding_defaults import DECODING_DEFAULTS

from ..music.vocab import INSTRUMENT, NOTE, PEDAL, SPECIAL, STYLE, TEMPO, TIMESIG, WAIT, Vocabulary, is_real, is_whole

# 8 nats at strength 1: measured with the shipped model on a piano phrase (4 bars, 4 seeds),
# a bias of 3 or 5 brought in no bass or guitar at all (the data rarely pairs them with
# piano); 8 makes 1 mean "play it" (about half the notes) while 0.75 stays a nudge.
STRENGTH_SCALE = 8.0
NEG = -1e9  # a logit nothing can be sampled from (finite, so softmax never sees nan)
NUCLEUS_FIRST = 512  # tokens sorted first for top-p (measured: the shipped model's 0.95 nuclei hold 2-470)

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "ionian": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10), "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11), "melodic_minor": (0, 2, 3, 5, 7, 9, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10), "phrygian": (0, 1, 3, 5, 7, 8, 10), "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10), "locrian": (0, 1, 3, 5, 6, 8, 10),
    "major_pentatonic": (0, 2, 4, 7, 9), "minor_pentatonic": (0, 3, 5, 7, 10), "blues": (0, 3, 5, 6, 7, 10),
    "chromatic": tuple(range(12)),
}
NOTE_NAMES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


class ControlError(MuseBridgeError):
    """A sampling control with a value that cannot be used."""


def parse_key(text: str) -> frozenset[int]:
    """'C major', 'F# minor', 'Bb dorian', 'A minor_pentatonic' -> pitch classes."""
    parts = text.strip().replace("-", "_").split()
    if len(parts) == 1:
        parts.append("major")
    if len(parts) != 2 or not parts[0] or parts[0][0].lower() not in NOTE_NAMES:
        raise ControlError(f"key {text!r} not understood; write e.g. 'C major', 'F# minor', 'Bb dorian'")
    root = NOTE_NAMES[parts[0][0].lower()]
    for acc in parts[0][1:]:
        if acc in "#♯":
            root += 1
        elif acc in "b♭":
            root -= 1
        else:
            raise ControlError(f"key {text!r}: {parts[0]!r} is not a note name (use A-G with # or b)")
    scale = parts[1].lower()
    if scale not in SCALES:
        raise ControlError(f"key {text!r}: unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    return frozenset((root + i) % 12 for i in SCALES[scale])


# --- the valid range of every control: one definition, used by SamplingControls (the app,
# the session, saved settings) and by the CLI's option types (cli/options.py) --------------
SEED_MAX = 2**32 - 1  # what a clip's metadata and a DAW's number field hold; numpy takes any such seed
TEMPERATURE_RANGE = (0.001, 100.0)  # below 1e-3 logits / T leave float range; above 100 is uniform noise
DENSITY_MAX = 64.0  # note-ons per beat


def check_seed(seed, label: str = "seed") -> int | None:
    """A seed is absent (None: drawn) or a whole number 0..SEED_MAX."""
    if seed is None:
        return None
    if not is_whole(seed) or not 0 <= seed <= SEED_MAX:
        raise ControlError(f"{label} {seed!r} is invalid: use a whole number from 0 to {SEED_MAX}")
    return int(seed)


def check_temperature(t, label: str = "temperature") -> float:
    lo, hi = TEMPERATURE_RANGE
    if not is_real(t) or not lo <= t <= hi:
        raise ControlError(f"{label} {t!r} is invalid: use a number from {lo:g} to {hi:g} (try 0.8-1.2)")
    return float(t)


def check_top_k(k, label: str = "top-k") -> int:
    if not is_whole(k) or k < 0:
        raise ControlError(f"{label} {k!r} is invalid: use 0 (off) or a positive whole number")
    return int(k)


def check_top_p(p, label: str = "top-p") -> float:
    if not is_real(p) or not 0 < p <= 1:
        raise ControlError(f"{label} {p!r} is invalid: use a number in (0, 1] (1 is off)")
    return float(p)


def check_min_p(p, label: str = "min-p") -> float:
    if not is_real(p) or not 0 <= p < 1:
        raise ControlError(f"{label} {p!r} is invalid: use a number in [0, 1) (0 is off; try 0.02-0.1)")
    return float(p)


def check_follow(x, label: str = "follow") -> float:
    """How closely to follow what the player does: 0 off, 1 strict."""
    if not is_real(x) or not 0.0 <= x <= 1.0:
        raise ControlError(f"{label} {x!r} is invalid: use 0 (off) to 1 (strict)")
    return float(x)


def check_density(d, label: str = "density") -> float | None:
    """Absent (None: free) or note-ons per beat in (0, DENSITY_MAX)."""
    if d is None:
        return None
    if not is_real(d) or not 0 < d < DENSITY_MAX:
        raise ControlError(f"{label} {d!r} is invalid: use note-ons per beat in (0, {DENSITY_MAX:g})")
    return float(d)


def check_strength(family: str, s) -> float:
    if not is_real(s) or not 0.0 <= s <= 1.0:
        raise ControlError(f"strength {family}={s!r} is invalid: use 0 to 1 (0 mutes, 0.5 neutral, 1 favours)")
    return float(s)


@dataclass(frozen=True)
class SamplingControls:
    """What the user steers with. Validated on creation: bad values get one clear line."""

    temperature: float = DECODING_DEFAULTS["temperature"]
    top_k: int = DECODING_DEFAULTS["top_k"]  # 0: off
    top_p: float = DECODING_DEFAULTS["top_p"]  # 1: off
    min_p: float = DECODING_DEFAULTS["min_p"]  # 0: off; else tokens below min_p x the likeliest one's probability are cut
    seed: int | None = None
    strengths: dict[str, float] = field(default_factory=dict)  # family -> 0..1 (missing: 0.5)
    key: str | None = None  # e.g. "C major": pitched note-ons outside it are masked (overrides follow_key)
    density: float | None = None  # target note-ons per beat
    # following the player (engine/decode/follow.py): 0 off .. 1 strict
    follow_key: float = DECODING_DEFAULTS["follow_key"]  # the key heard in the player's notes
    follow_groove: float = DECODING_DEFAULTS["follow_groove"]  # the onset grid (and swing) the player uses
    follow_texture: float = DECODING_DEFAULTS["follow_texture"]  # note lengths and voices near the player's

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_top_k(self.top_k)
        check_top_p(self.top_p)
        check_min_p(self.min_p)
        check_seed(self.seed)
        if not isinstance(self.strengths, dict):
            raise ControlError(f"strengths {self.strengths!r} must map families to 0..1")
        for fam, s in self.strengths.items():
            check_strength(fam, s)
        if self.key is not None:
            if not isinstance(self.key, str):
                raise ControlError(f"key {self.key!r} not understood; write e.g. 'C major', 'F# minor', 'Bb dorian'")
            parse_key(self.key)
        check_density(self.density)
        for name in FOLLOW_CONTROLS:
            check_follow(getattr(self, name), name.replace("_", "-"))

    def with_(self, **changes) -> "SamplingControls":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Every control as plain JSON values: what a clip's metadata and a jam's answer
        records carry, so a take can be recalled with `from_dict`."""
        d = asdict(self)
        d["strengths"] = dict(self.strengths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingControls":
        """Controls from `to_dict`'s output (unknown keys, e.g. from a newer version, ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


FOLLOW_CONTROLS = ("follow_key", "follow_groove", "follow_texture")


def parse_strengths(text: str, vocab: Vocabulary) -> dict[str, float]:
    """'piano=1,drums=0' -> {'piano': 1.0, 'drums': 0.0}, checked against the vocabulary."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, val = item.partition("=")
        name = name.strip()
        if not sep:
            raise ControlError(f"strength {item!r} needs the form family=value, e.g. piano=1")
        if name not in vocab.family_index:
            raise ControlError(f"strength for unknown instrument {name!r}; families: {', '.join(vocab.family_index)}")
        try:
            out[name] = float(val)
        except ValueError:
            raise ControlError(f"strength {item!r}: {val!r} is not a number between 0 and 1") from None
    return out


class Grammar:
    """Which tokens are legal next: no note-off for a silent key, no note-on for a sounding
    one, a pedal change never to the state it is in and at most up-then-down per instant,
    no prefix tokens in the body, no `end` while anything sounds."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        v = vocab
        is_note = v.kind == NOTE
        # one key per (family, pitch): its ids are contiguous [off?, v1..vB]
        key_of = np.full(len(v), -1, np.int64)
        offs, ons_lo, ons_hi, has_off = [], [], [], []
        k = 0
        for fi, f in enumerate(v.families):
            off = v.has_note_off(fi)
            for p in range(f.low, f.high + 1):
                first = v.note(fi, p, 0 if off else 1)
                key_of[first : first + v.note_stride[fi]] = k
                offs.append(first if off else -1)
                ons_lo.append(first + int(off))
                ons_hi.append(first + v.note_stride[fi])
                has_off.append(off)
                k += 1
        self.key_of = key_of
        self.off_id = np.array(offs)
        self.on_lo, self.on_hi = np.array(ons_lo), np.array(ons_hi)
        self.is_on = is_note & (v.vbin > 0)
        self.is_off = is_note & (v.vbin == 0)
        self.base = np.zeros(len(v), np.float32)
        never = (v.kind == STYLE) | (v.kind == INSTRUMENT) | (v.kind == TEMPO) | (v.kind == TIMESIG) | (v.kind == SPECIAL)
        self.base[never] = NEG
        self.base[v.end] = 0.0
        self.base[self.is_off] = NEG  # opened per sounding key
        # a pedal's other state: a change to the state it is in, or a second change at the same
        # instant, says nothing (and, pushed by the follow biases, a model once flipped a pedal
        # until the output guard stopped it)
        self.is_wait = v.kind == WAIT
        self.pedal_other = np.full(len(v), -1, np.int64)
        for fi in v.pedal_family:
            up, down = v.pedal(fi, False), v.pedal(fi, True)
            self.pedal_other[up], self.pedal_other[down] = down, up
            self.base[up] = NEG  # every pedal starts up
        self.reset()

    def reset(self) -> None:
        self.mask = self.base.copy()
        self.sounding: set[int] = set()
        self.pedaled: list[int] = []  # pedal tokens changed at this instant (their other state is shut too)

    def copy(self) -> "Grammar":
        g = object.__new__(Grammar)
        g.__dict__.update(self.__dict__)
        g.mask = self.mask.copy()
        g.sounding = set(self.sounding)
        g.pedaled = list(self.pedaled)
        return g

    def update(self, token: int) -> None:
        k = self.key_of[token]
        if k < 0:
            if self.is_wait[token] and self.pedaled:  # time passes: each pedal may change again
                for t in self.pedaled:
                    self.mask[self.pedal_other[t]] = 0.0
                self.pedaled.clear()
            other = self.pedal_other[token]
            if other >= 0:
                self.mask[token], self.mask[other] = NEG, 0.0
                if self.vocab.vbin[token]:  # down (alone, or after an up: a re-pedal): shut both until time passes
                    self.mask[other] = NEG
                    self.pedaled.append(int(token))
            return
        if self.off_id[k] < 0:
            return
        if self.is_on[token]:
            self.sounding.add(int(k))
            self.mask[self.off_id[k]] = 0.0
            self.mask[self.on_lo[k] : self.on_hi[k]] = NEG
        else:
            self.sounding.discard(int(k))
            self.mask[self.off_id[k]] = NEG
            self.mask[self.on_lo[k] : self.on_hi[k]] = 0.0
        self.mask[self.vocab.end] = NEG if self.sounding else 0.0

    def closing_tokens(self) -> list[int]:
        """Note-offs for every sounding key: what generation appends before it stops."""
        return [int(self.off_id[k]) for k in sorted(self.sounding)]


# What one instant (no wait between) of generated music can hold before it is a flood, not
# music. Measured at one instant (8 bars x 2 variations, seeds 1 and 3): the shipped model at
# temperature 1-2, even with strength 1 on piano or on drums and bass (8 nats pushing onsets),
# struck one key at most 13 times, changed a pedal 4 times and put 465 tokens there; untrained
# random models (the tests' tiny ones) 2, 2 and 503. Damaged weights struck one key 448 times at
# tick 0, or never let time pass. Each bound sits well above the first and far below the last.
MAX_STRIKES_PER_KEY = 32  # onsets of one (family, pitch) at one instant
MAX_PEDALS_PER_FAMILY = 16  # pedal changes of one family at one instant
MAX_TOKENS_PER_INSTANT = 2048  # anything at one instant; at ~1 ms a step a stuck answer ends in seconds


class OutputGuard:
    """The bounds above, checked on every sampled token of one answer (one row).

    Both decode loops use it -- `generate.continue_rows` and the jam's `Timeline.generate` --
    on what the model samples, never on what the player plays. Breaking a bound raises
    `ModelOutputError`: the answer stops with one clear line instead of flooding a DAW.
    """

    def __init__(self, vocab: Vocabulary, source: str | None = None):
        self.vocab = vocab
        self.source = source
        self.strikes: dict[tuple[int, int], int] = {}
        self.pedals: dict[int, int] = {}
        self.tokens = 0

    def check(self, token: int) -> None:
        v = self.vocab
        kind = v.kind[token]
        if kind == WAIT:  # time passes: a new instant
            if self.tokens:
                self.strikes.clear()
                self.pedals.clear()
                self.tokens = 0
            return
        self.tokens += 1
        if self.tokens > MAX_TOKENS_PER_INSTANT:
            self._fail(f"more than {MAX_TOKENS_PER_INSTANT} tokens without time passing")
        fam = int(v.family[token])
        if kind == NOTE and v.vbin[token] > 0:
            key = (fam, int(v.pitch[token]))
            n = self.strikes[key] = self.strikes.get(key, 0) + 1
            if n > MAX_STRIKES_PER_KEY:
                self._fail(f"{v.families[fam].name} note {key[1]} struck {n} times at one instant")
        elif kind == PEDAL:
            n = self.pedals[fam] = self.pedals.get(fam, 0) + 1
            if n > MAX_PEDALS_PER_FAMILY:
                self._fail(f"{v.families[fam].name} pedal changed {n} times at one instant")

    def _fail(self, what: str) -> None:
        raise ModelOutputError(f"model {self.source or '(in memory)'} produced output that is not music ({what}); "
                               "its weights may be damaged (re-copy or retrain the model), or the controls push it "
                               "too far (lower the temperature or the strengths)")


class LogitShaper:
    """Controls -> a static bias and the density rule; `row_decoder.RowDecoder` samples with them
    (and rebuilds its biases when `set_controls` gives a new bias, between any two steps)."""

    def __init__(self, vocab: Vocabulary, controls: SamplingControls = SamplingControls()):
        self.vocab = vocab
        self.set_controls(controls)

    def set_controls(self, controls: SamplingControls) -> None:
        v = self.vocab
        bias = np.zeros(len(v), np.float32)
        on = (v.kind == NOTE) & (v.vbin > 0)
        for fam, s in controls.strengths.items():
            sel = on & (v.family == v.family_index[fam])
            bias[sel] = NEG if s <= 0 else STRENGTH_SCALE * (2 * s - 1)
        if controls.key:
            pcs = np.array(sorted(parse_key(controls.key)))
            drums = np.array([f.is_drums for f in v.families])
            pitched = on & ~drums[np.maximum(v.family, 0)]
            outside = pitched & ~np.isin(v.pitch % 12, pcs)
            bias[outside] = NEG
        self.controls = controls
        self.bias = bias
        self.rng = np.random.default_rng(controls.seed)

    def density_bias(self, recent_notes_per_beat: float | None) -> float:
        """Extra logit on all note-ons pushing towards the density target (log ratio)."""
        return density_shift(self.controls.density, recent_notes_per_beat)


def density_shift(target: float | None, rate: float | None) -> float:
    """The logit on every note-on that moves a note rate towards `target` (log ratio, +-3)."""
    if target is None or rate is None:
        return 0.0
    return float(np.clip(math.log((target + 0.25) / (rate + 0.25)), -3.0, 3.0))


def sample_logits(x: np.ndarray, top_k: int, top_p: float, rng: np.random.Generator, min_p: float = 0.0,
                  parts: np.ndarray | None = None, band: np.ndarray | None = None) -> int:
    """Sample from (already tempered and masked) logits with top-k, min-p, then top-p.

    min-p (Nguyen et al. 2024) cuts tokens less likely than `min_p` times the likeliest:
    unlike top-p it cuts more where the model is sure and less where it is not.

    `parts`: the first id of each contiguous block of the vocabulary that is one part's
    (each family's notes; time; controls), `band` marks the parts never cut (the player's
    families, those turned up, time). Then the nucleus is taken in two steps, not over
    the whole step's tokens: a part by its whole probability -- one of the band, or
    another where the band's parts hold under `top_p` (`_draw_part`) -- then one of its
    tokens from its own top-p. A nucleus over everything cuts whatever is spread
    thin, and in a band the pitched parts are: each of a guitar's or bass's notes is
    unlikely even when the part is likely to play, so the nucleus kept the drums' few keys
    and cut the others (band answers played 0.6x the prompt's guitar, bass and keys at
    top-p 0.95, 0.9x at 1.0, 24 band test prompts x 2 seeds). Top-p chooses which notes a
    part plays, never whether it plays.

    Sampling runs once per token beside a decode step of well under a millisecond, so
    it must not sort the whole vocabulary: the nucleus is found among the few most likely
    tokens (an O(V) partition, then a sort of `NUCLEUS_FIRST`); only a flat distribution
    whose nucleus is wider than that sorts everything. Draws go over ids in id order
    (inverse CDF), so a seed gives the same token on every runtime.
    """
    if top_k and top_k < len(x):
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max())
    p[x < NEG / 2] = 0.0
    if min_p > 0.0:
        p[p < min_p] = 0.0  # p.max() is 1 here: p = exp(x - max)
    p /= p.sum()
    if top_p >= 1.0:
        return draw(p, rng)
    if parts is None:
        return _nucleus_draw(p, top_p, rng)
    i = _draw_part(np.add.reduceat(p, parts), top_p, rng, band)
    lo, hi = int(parts[i]), int(parts[i + 1]) if i + 1 < len(parts) else len(p)
    return lo + _nucleus_draw(p[lo:hi], top_p, rng)


def _draw_part(mass: np.ndarray, top_p: float, rng: np.random.Generator, band: np.ndarray | None) -> int:
    """A part by its probability, from the band's parts and then the likeliest others, as
    long as the band's hold less than `top_p` (a handful of parts: sorting them is free).
    A part outside the band comes in only where the model is sure of it: ranked by mass
    alone, a guitar nobody asked for came into a piano phrase whose bass and drums were
    turned up, as soon as the model heard a band."""
    band = np.ones(len(mass), bool) if band is None else band
    order = np.lexsort((-mass, ~band))  # the band first, each group likeliest first
    cum = np.cumsum(mass[order])
    keep = order[: int(np.searchsorted(cum, top_p * cum[-1])) + 1]
    keep = np.sort(np.union1d(keep, np.nonzero(band & (mass > 0))[0]))
    return int(keep[draw(mass[keep], rng)])


def _nucleus_draw(p: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    """One of the likeliest ids of `p` holding `top_p` of its mass, by their probabilities."""
    order = np.arange(len(p))
    if NUCLEUS_FIRST < len(p):
        order = np.argpartition(p, len(p) - NUCLEUS_FIRST)[len(p) - NUCLEUS_FIRST :]
    order = order[np.argsort(-p[order])]
    cum = np.cumsum(p[order])
    total = float(p.sum())
    if cum[-1] < top_p * total:  # a flat distribution: the nucleus is wide, sort it all
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
    # drawn in id order, not probability order: two runtimes whose logits differ in the
    # last digits would otherwise swap near-equal tokens and part ways on one seed
    keep = np.sort(order[: int(np.searchsorted(cum, top_p * total)) + 1])
    return int(keep[draw(p[keep], rng)])


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index i with probability weights[i] / sum (one uniform draw)."""
    cum = np.cumsum(weights, dtype=np.float64)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(weights) - 1))
