"""Instrument families: the instrument half of every note token.

MuseNet gave each instrument its own tokens; we group the 128 General MIDI programs into
families (the GM program groups of eight) so the vocabulary stays small enough for a
model that decodes in milliseconds on a laptop CPU. Each family has a playable range:
the vocabulary holds only (family, pitch) pairs inside it, and notes outside are folded
by octaves into it when a piece is read (see `fold_into_range`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Family:
    """One instrument family: its token name, GM program played on output and range."""

    name: str
    program: int  # GM program (0-based) sent on output; ignored for drums
    low: int  # lowest playable MIDI pitch, inclusive
    high: int  # highest playable MIDI pitch, inclusive
    is_drums: bool = False

    def __contains__(self, pitch: int) -> bool:
        return self.low <= pitch <= self.high

    @property
    def size(self) -> int:
        """How many pitches the family can play."""
        return self.high - self.low + 1


# Order matters: it is the token order within a tick and the vocabulary order.
FAMILIES: tuple[Family, ...] = (
    Family("piano", 0, 21, 108),
    Family("chromatic_percussion", 11, 36, 108),  # vibraphone
    Family("organ", 19, 24, 96),  # church organ
    Family("guitar", 25, 40, 88),  # steel acoustic guitar
    Family("bass", 33, 23, 67),  # electric bass (finger)
    Family("strings", 40, 23, 105),  # violin; harp and contrabass set the range
    Family("ensemble", 48, 28, 105),  # string ensemble; choirs live here too
    Family("brass", 61, 26, 96),  # brass section
    Family("reed", 65, 34, 96),  # alto sax
    Family("pipe", 73, 48, 108),  # flute
    Family("synth_lead", 81, 24, 108),  # sawtooth lead
    Family("synth_pad", 89, 24, 108),  # warm pad
    Family("drums", 0, 27, 87, is_drums=True),  # GM2 percussion key map
)

FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
FAMILY_INDEX: dict[str, int] = {f.name: i for i, f in enumerate(FAMILIES)}
DRUMS = FAMILY_BY_NAME["drums"]
DRUM_CHANNEL = 9  # GM channel 10, 0-based
# Keys outside the GM map that electronic kits send for a GM sound: Roland's hi-hat edge
# hits (22 closed, 26 open), which the Groove MIDI recordings are full of. Read as the
# GM hi-hats, a drummer's e-kit and Groove's hi-hat grooves keep their hi-hat.
DRUM_KEY_ALIASES: dict[int, int] = {22: 42, 26: 46}

# GM program groups of eight -> family. 96..127 (synth effects, ethnic, percussive,
# sound effects) have no family of their own: each goes to its nearest sound.
_GROUP_FAMILY: tuple[str, ...] = (
    "piano",  # 0-7
    "chromatic_percussion",  # 8-15
    "organ",  # 16-23
    "guitar",  # 24-31
    "bass",  # 32-39
    "strings",  # 40-47
    "ensemble",  # 48-55
    "brass",  # 56-63
    "reed",  # 64-71
    "pipe",  # 72-79
    "synth_lead",  # 80-87
    "synth_pad",  # 88-95
    "synth_pad",  # 96-103 synth effects
    "guitar",  # 104-111 ethnic: sitar, banjo, shamisen, koto... (plucked)
    "chromatic_percussion",  # 112-119 percussive: tinkle bell, steel drums...
    "synth_pad",  # 120-127 sound effects
)
_ETHNIC_OVERRIDES = {108: "chromatic_percussion", 109: "reed", 110: "strings", 111: "reed"}


def family_for_program(program: int, channel: int | None = None) -> Family:
    """The family a GM program (0-127) plays in; channel 9 (GM 10) is always drums."""
    if channel == DRUM_CHANNEL:
        return DRUMS
    if not 0 <= program <= 127:
        raise ValueError(f"GM program {program} is outside 0..127")
    name = _ETHNIC_OVERRIDES.get(program, _GROUP_FAMILY[program // 8])
    return FAMILY_BY_NAME[name]


def get_family(name: str) -> Family:
    """Look a family up by name, with an error that lists the valid names."""
    try:
        return FAMILY_BY_NAME[name]
    except KeyError:
        valid = ", ".join(FAMILY_BY_NAME)
        raise ValueError(f"unknown instrument family {name!r}; use one of: {valid}") from None


def fold_into_range(pitch: int, family: Family) -> int | None:
    """Move a pitch by octaves into the family's range; None for drums out of the map.

    Pitch class is what the ear follows, so folding keeps melodies recognisable where
    clamping would flatten them. A drum key outside the map has no meaning to fold,
    unless it is an e-kit's alias of a GM key (`DRUM_KEY_ALIASES`).
    """
    if pitch in family:
        return pitch
    if family.is_drums:
        alias = DRUM_KEY_ALIASES.get(pitch)
        return alias if alias is not None and alias in family else None
    while pitch < family.low:
        pitch += 12
    while pitch > family.high:
        pitch -= 12
    return pitch if pitch in family else None
