"""The token vocabulary: a config, the id layout it implies, and its JSON file.

After MuseNet, one token carries (instrument family, pitch, velocity bin) for a note-on,
and the same with velocity 0 (`off`) for its note-off; waits advance time. Like miditok,
the vocabulary is built from a config object and saved as JSON next to every model, so
a model's tokens are always decoded with the vocabulary it was trained on.

Id layout, in order: specials, waits, notes (per family: per pitch, off then the
velocity bins), pedals, tempos, time signatures, instruments, styles. Styles come last
so vocabularies that differ only in their style list agree on every other id.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from musebridge.errors import VocabError

from .families import FAMILIES, FAMILY_BY_NAME, Family

VOCAB_FORMAT = "musebridge-vocab"
VOCAB_VERSION = 1

# Token kinds (values of Vocabulary.kind).
SPECIAL, WAIT, NOTE, PEDAL, TEMPO, TIMESIG, INSTRUMENT, STYLE = range(8)

PAD, START, END = "pad", "start", "end"
UNKNOWN_STYLE = "unknown"
TIMESIG_DENOMINATORS = (2, 4, 8, 16)
TIMESIG_MAX_NUMERATOR = 16


def is_whole(value) -> bool:
    """An integer that is not a bool: a size read from a file or a user (JSON `true` is no size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A finite number that is not a bool (NaN and infinity are never a setting)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


@dataclass(frozen=True)
class VocabConfig:
    """Everything that decides the token layout. Saved with the vocabulary."""

    time_mode: Literal["beats", "seconds"] = "beats"
    ticks_per_beat: int = 12  # 12: triplets and 16ths exact; 4 is the coarse option
    max_wait_beats: int = 4  # longest single wait token (longer gaps chain waits)
    wait_ms: int = 10  # seconds mode: one wait tick
    max_wait_ms: int = 1000
    velocity_bins: int = 8
    drum_note_offs: bool = True  # False: drums are one-shots (fewer tokens, fixed length)
    tempo_bins: int = 48  # geometric between min_bpm and max_bpm
    min_bpm: float = 20.0
    max_bpm: float = 320.0
    families: tuple[str, ...] = tuple(f.name for f in FAMILIES)
    styles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Every field checked (type and a range any real vocabulary has), so a damaged
        vocab.json is one line, never a failure or a huge allocation while building ids."""
        problems = []

        def whole(name: str, lo: int, hi: int, hint: str = "") -> bool:
            value = getattr(self, name)
            if is_whole(value) and lo <= value <= hi:
                return True
            problems.append(f"{name} {value!r} (use a whole number {lo}..{hi}{hint})")
            return False

        if not isinstance(self.time_mode, str) or self.time_mode not in ("beats", "seconds"):
            problems.append(f"time_mode {self.time_mode!r} (use 'beats' or 'seconds')")
        whole("ticks_per_beat", 1, 96, ", e.g. 12 or 4")
        whole("velocity_bins", 1, 127, ", e.g. 8")
        whole("max_wait_beats", 1, 64)
        if whole("wait_ms", 1, 1000):
            whole("max_wait_ms", self.wait_ms, 60_000)
        if not isinstance(self.drum_note_offs, bool):
            problems.append(f"drum_note_offs {self.drum_note_offs!r} (use true or false)")
        whole("tempo_bins", 2, 1024)
        if not (is_real(self.min_bpm) and is_real(self.max_bpm) and 1 <= self.min_bpm < self.max_bpm <= 1000):
            problems.append(f"tempo range {self.min_bpm!r}..{self.max_bpm!r} (use 1 <= min_bpm < max_bpm <= 1000)")
        names_ok = all(isinstance(n, str) for n in (*self.families, *self.styles))
        if not names_ok:
            problems.append("families and styles must be names (strings)")
        elif not self.families or len(set(self.families)) != len(self.families):
            problems.append(f"families {list(self.families)} (each known family at most once, at least one)")
        elif [f for f in self.families if f not in FAMILY_BY_NAME]:
            unknown = [f for f in self.families if f not in FAMILY_BY_NAME]
            problems.append(f"families {unknown} (known: {', '.join(FAMILY_BY_NAME)})")
        if names_ok and (len(set(self.styles)) != len(self.styles) or len(self.styles) > 100_000):
            problems.append("styles (each at most once, at most 100000)")
        if problems:
            raise VocabError("bad vocabulary config: " + "; ".join(problems))

    @property
    def max_wait_ticks(self) -> int:
        if self.time_mode == "beats":
            return self.ticks_per_beat * self.max_wait_beats
        return self.max_wait_ms // self.wait_ms

    def with_styles(self, styles: list[str] | tuple[str, ...]) -> "VocabConfig":
        """The same layout with a new style list (sorted, deduplicated)."""
        d = asdict(self)
        d["styles"] = tuple(sorted(set(styles) - {UNKNOWN_STYLE}))
        d["families"] = tuple(d["families"])
        return VocabConfig(**d)


def velocity_bin_edges(bins: int) -> np.ndarray:
    """Lower edges of the velocity bins over 1..127 (bin b covers edges[b-1]..edges[b]-1)."""
    return np.array([1 + (127 * b) // bins for b in range(bins)] + [128])


class Vocabulary:
    """Token ids <-> meanings, with lookup tables for vectorised encode/decode/augment."""

    def __init__(self, config: VocabConfig = VocabConfig()):
        self.config = config
        self.families: list[Family] = [FAMILY_BY_NAME[n] for n in config.families]
        names: list[str] = []
        kind: list[int] = []
        fam: list[int] = []
        pitch: list[int] = []
        vbin: list[int] = []
        value: list[float] = []

        def add(name: str, k: int, f: int = -1, p: int = -1, b: int = -1, v: float = 0.0) -> int:
            names.append(name)
            kind.append(k)
            fam.append(f)
            pitch.append(p)
            vbin.append(b)
            value.append(v)
            return len(names) - 1

        self.pad = add(PAD, SPECIAL)
        self.start = add(START, SPECIAL)
        self.end = add(END, SPECIAL)
        self.wait_base = len(names)
        for t in range(1, config.max_wait_ticks + 1):
            add(f"wait:{t}", WAIT, v=t)
        self.velocity_edges = velocity_bin_edges(config.velocity_bins)
        self.note_base: list[int] = []  # id of (family, family.low, off)
        self.note_stride: list[int] = []  # ids per pitch in that family
        for fi, f in enumerate(self.families):
            self.note_base.append(len(names))
            has_off = not (f.is_drums and not config.drum_note_offs)
            self.note_stride.append(config.velocity_bins + int(has_off))
            for p in range(f.low, f.high + 1):
                if has_off:
                    add(f"{f.name}:{p}:off", NOTE, fi, p, 0)
                for b in range(1, config.velocity_bins + 1):
                    add(f"{f.name}:{p}:v{b}", NOTE, fi, p, b, self.bin_velocity(b))
        self.pedal_base = len(names)
        self.pedal_family: list[int] = [fi for fi, f in enumerate(self.families) if not f.is_drums]
        for fi in self.pedal_family:
            add(f"pedal:{self.families[fi].name}:off", PEDAL, fi, b=0)
            add(f"pedal:{self.families[fi].name}:on", PEDAL, fi, b=1)
        self.tempo_base = len(names)
        self.tempo_values = np.geomspace(config.min_bpm, config.max_bpm, config.tempo_bins)
        for i, bpm in enumerate(self.tempo_values):
            add(f"tempo:{bpm:.1f}", TEMPO, b=i, v=float(bpm))
        self.timesig_base = len(names)
        for den in TIMESIG_DENOMINATORS:
            for num in range(1, TIMESIG_MAX_NUMERATOR + 1):
                add(f"timesig:{num}/{den}", TIMESIG, p=num, b=den)
        self.instrument_base = len(names)
        for fi, f in enumerate(self.families):
            add(f"inst:{f.name}", INSTRUMENT, fi)
        self.style_base = len(names)
        self.styles: list[str] = [UNKNOWN_STYLE, *config.styles]
        for s in self.styles:
            add(f"style:{s}", STYLE)

        self.names = names
        self.ids = {n: i for i, n in enumerate(names)}
        self.kind = np.array(kind, np.int8)
        self.family = np.array(fam, np.int16)
        self.pitch = np.array(pitch, np.int16)
        self.vbin = np.array(vbin, np.int16)
        self.value = np.array(value, np.float64)
        self.family_index = {f.name: i for i, f in enumerate(self.families)}
        self._pedal_id = {fi: self.pedal_base + 2 * j for j, fi in enumerate(self.pedal_family)}

    # --- sizes and names -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        c = self.config
        return f"Vocabulary({len(self)} tokens, {c.time_mode}, {len(self.families)} families, {len(self.styles)} styles)"

    def token_name(self, token: int) -> str:
        return self.names[token]

    def describe(self, tokens) -> list[str]:
        return [self.names[int(t)] for t in tokens]

    # --- ids for meanings -------------------------------------------------------------
    def wait(self, ticks: int) -> int:
        """Id of a single wait of 1..max_wait_ticks ticks."""
        return self.wait_base + ticks - 1

    def velocity_bin(self, velocity: int) -> int:
        """Bin 1..velocity_bins of a MIDI velocity 1..127 (0 is note-off)."""
        v = min(max(int(velocity), 1), 127)
        return int(np.searchsorted(self.velocity_edges, v, side="right"))

    def bin_velocity(self, b: int) -> int:
        """The velocity a bin decodes to: the middle of the bin."""
        e = self.velocity_edges
        return int((e[b - 1] + e[b] - 1) // 2)

    def has_note_off(self, family_idx: int) -> bool:
        return self.note_stride[family_idx] > self.config.velocity_bins

    def note(self, family_idx: int, pitch: int, vbin: int) -> int:
        """Id of a note token; vbin 0 is the note-off. Pitch must be in the family range."""
        f = self.families[family_idx]
        if not f.low <= pitch <= f.high:
            raise ValueError(f"pitch {pitch} outside {f.name} range {f.low}..{f.high}")
        off = int(self.has_note_off(family_idx))
        if vbin == 0 and not off:
            raise ValueError(f"{f.name} has no note-off tokens in this vocabulary")
        return self.note_base[family_idx] + (pitch - f.low) * self.note_stride[family_idx] + vbin - 1 + off

    def pedal(self, family_idx: int, down: bool) -> int | None:
        base = self._pedal_id.get(family_idx)
        return None if base is None else base + int(down)

    def tempo(self, bpm: float) -> int:
        """Nearest tempo bin (in log space: tempo is heard as ratios)."""
        c = self.config
        bpm = min(max(bpm, c.min_bpm), c.max_bpm)
        i = round((c.tempo_bins - 1) * math.log(bpm / c.min_bpm) / math.log(c.max_bpm / c.min_bpm))
        return self.tempo_base + i

    def timesig(self, numerator: int, denominator: int) -> int:
        den = min(TIMESIG_DENOMINATORS, key=lambda d: abs(d - denominator))
        num = min(max(int(numerator), 1), TIMESIG_MAX_NUMERATOR)
        return self.timesig_base + TIMESIG_DENOMINATORS.index(den) * TIMESIG_MAX_NUMERATOR + num - 1

    def instrument(self, family: str) -> int:
        return self.instrument_base + self.family_index[family]

    def style(self, style: str | None) -> int:
        """Id of a style token; styles the vocabulary lacks map to `unknown`."""
        if style is None or style not in self.styles:
            return self.style_base
        return self.style_base + self.styles.index(style)

    def note_token_mask(self, family: str | None = None, offs: bool | None = None) -> np.ndarray:
        """Boolean mask over ids: note tokens, optionally of one family / only (non-)offs."""
        m = self.kind == NOTE
        if family is not None:
            m &= self.family == self.family_index[family]
        if offs is not None:
            m &= (self.vbin == 0) if offs else (self.vbin > 0)
        return m

    # --- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        cfg = asdict(self.config)
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "config": cfg, "size": len(self), "tokens": self.names}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> "Vocabulary":
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            raise VocabError(f"{source} is not a MuseBridge vocabulary file (no format {VOCAB_FORMAT!r})")
        if d.get("version") != VOCAB_VERSION:
            raise VocabError(
                f"{source} has vocabulary version {d.get('version')}; this MuseBridge reads version "
                f"{VOCAB_VERSION}: upgrade MuseBridge or re-export the model"
            )
        try:
            cfg = dict(d["config"])
            cfg["families"] = tuple(cfg["families"])
            cfg["styles"] = tuple(cfg["styles"])
            vocab = cls(VocabConfig(**cfg))
        except VocabError as e:
            raise VocabError(f"{source}: {e}; re-copy or re-export the model") from None
        except (KeyError, TypeError, ValueError) as e:
            raise VocabError(f"{source} has a malformed config ({e}); re-export the model") from None
        if d.get("size", len(vocab)) != len(vocab) or vocab.names != d.get("tokens"):
            raise VocabError(f"{source}: token list does not match its config; the file is corrupt or was edited")
        return vocab

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise VocabError(f"vocabulary file {path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VocabError(f"vocabulary file {path} is unreadable ({e}); re-export the model") from None
        return cls.from_dict(d, source=f"vocabulary file {path}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.names == other.names

    __hash__ = None  # type: ignore[assignment]


def ticks_per_unit(v: Vocabulary) -> float:
    """Grid ticks per decoder time unit (beats, or seconds in seconds mode)."""
    return v.config.ticks_per_beat if v.config.time_mode == "beats" else 1000.0 / v.config.wait_ms
