"""A parsed music21 stream as a `Piece`: walked directly into notes, tempos and time signatures.

Instrument families: part names first (music21 files often carry Finale's default
"Grand Piano" program on voice parts, e.g. the Monteverdi madrigals, so names are the
better evidence), then the music21 instrument class, then the GM program. Voices and
choirs go to "ensemble". An unnamed single-line part -- a folk tune -- plays as "pipe"
(the fife/flute/whistle these books were written for); any other unknown part is
"piano". Unpitched (percussion) notes are skipped; mid-part instrument changes are
ignored (the part's first instrument decides).

Notes: tied notes merge into one (per MIDI pitch, so enharmonic ties merge and an ABC
"tie" between different pitches -- a slur -- does not; music21's stripTies gets both
wrong), chords expand, rests, grace notes (no duration of their own) and chord symbols
are skipped; repeats are not expanded; transposing instruments and ottavas are brought
to sounding pitch; doublings (same family, pitch and onset, e.g. choir voices in
unison) are one note, as they would be on one MIDI channel. Velocity comes from the
note's own volume, else the part's latest dynamic mark (MIDI-convention levels, mf = 80;
staves of one piano share marks), else 80. Metronome marks give tempos (a printed
number beats Finale's playback-only value); time signatures come from the first part.

"""

from __future__ import annotations

import bisect
import copy
import re
from dataclasses import dataclass
from typing import Any

from ..music.events import Note, Piece, Tempo, TimeSignature
from ..music.families import FAMILY_BY_NAME, Family, family_for_program, fold_into_range
from .music21_styles import _ascii_fold

DEFAULT_VELOCITY = 80
_EPS = 1e-6

# ---------------------------------------------------------------------------------------
# Conversion


def score_to_piece(score: Any, style: str | None = None, name: str = "") -> Piece:
    """Convert any parsed music21 Score, Part or Stream (or an Opus of voices) to a Piece.

    The score is not modified (a copy is made only when it must be transposed to
    sounding pitch).
    """
    return _convert(score, style=style, name=name, owned=False)


@dataclass
class _PartData:
    """What one walk over a part collects, with absolute offsets in quarter notes."""

    names: list[str]
    notes: list[list]  # [start, duration, midi, velocity or None]; ties lengthen in place
    dynamics: list[tuple[float, str]]
    tempos: list[tuple[float, int, float]]  # time, priority (0 best), quarter BPM
    time_signatures: list[tuple[float, int, int]]
    instrument: Any = None
    has_chords: bool = False
    transposing: bool = False  # written pitch seen: a transposing instrument or ottava


def _convert(score: Any, style: str | None, name: str, owned: bool) -> Piece:
    parts = _collect(score)
    if any(data.transposing for data in parts):
        if not owned:
            score = copy.deepcopy(score)
        score.toSoundingPitch(inPlace=True)
        parts = _collect(score)
    notes: list[Note] = []
    for data in parts:
        notes.extend(_part_notes(data, _family_for_part(data)))
    return Piece(
        notes=_dedupe(notes),
        tempos=_tempos(parts),
        time_signatures=_time_signatures(parts),
        style=style,
        name=name,
    ).sorted()


def _collect(score: Any) -> list[_PartData]:
    """Walk every part; marks placed on the score itself come last, as one more part."""
    streams = _part_streams(score)
    parts = [_walk_part(part, offset, names) for part, offset, names in streams]
    _share_staff_dynamics(score, [s for s, _, _ in streams], parts)
    if len(streams) > 1 or streams[0][0] is not score:
        outer = _PartData(names=[], notes=[], dynamics=[], tempos=[], time_signatures=[])
        _walk(score, 0.0, outer, {}, descend=False)
        parts.append(outer)
    return parts


def _share_staff_dynamics(score: Any, streams: list[Any], parts: list[_PartData]) -> None:
    """Staves of one instrument (piano hands) share dynamics, which sit on one staff only."""
    from music21 import layout, stream

    if not isinstance(score, stream.Score):
        return
    index = {id(s): i for i, s in enumerate(streams)}
    for group in score.getElementsByClass(layout.StaffGroup):
        members = [index[id(s)] for s in group.getSpannedElements() if id(s) in index]
        if len(members) < 2 or not all(isinstance(streams[i], stream.PartStaff) for i in members):
            continue
        shared = sorted({mark for i in members for mark in parts[i].dynamics})
        for i in members:
            parts[i].dynamics = list(shared)


def _part_streams(score: Any) -> list[tuple[Any, float, list[str]]]:
    """(part, offset of the part in the score, extra names) for every part.

    An Opus here is a file of voices (the Josquin ABC files): each score's parts are
    voices of one piece, named by the score's second title ("Superius", "Bassus").
    """
    from music21 import stream

    if isinstance(score, stream.Opus):
        out = []
        for sc in score.scores:
            voice_names = [str(t) for t in (sc.metadata["alternativeTitle"] if sc.metadata else ())]
            out.extend((p, off, names + voice_names) for p, off, names in _part_streams(sc))
        return out
    if isinstance(score, stream.Score) or score.hasPartLikeStreams():
        return [(p, float(score.elementOffset(p)), []) for p in score.parts]
    return [(score, 0.0, [])]


def _walk_part(part: Any, base: float, names: list[str]) -> _PartData:
    data = _PartData(names=[], notes=[], dynamics=[], tempos=[], time_signatures=[])
    open_ties: dict[int, int] = {}
    _walk(part, base, data, open_ties)
    data.names = [n for n in [getattr(part, "partName", None), *names] if n]
    inst = data.instrument
    if inst is not None:
        data.names += [n for n in (inst.partName, inst.instrumentName) if n]
    return data


def _walk(
    container: Any, base: float, data: _PartData, open_ties: dict[int, int], descend: bool = True
) -> None:
    """Depth-first over measures and voices, each element's offset taken from its own site.

    Offsets come from `container.elementOffset(el)`, never `el.offset`, because one
    element object may sit in several measures (the shared TimeSignature of some Essen
    tunes) and `el.offset` then reports whichever site was set last.
    """
    from music21 import chord, dynamics, harmony, instrument, meter, note, spanner, stream, tempo

    for el in container.elements:
        at = base + float(container.elementOffset(el))
        if isinstance(el, stream.Stream):
            if descend:
                _walk(el, at, data, open_ties)
        elif isinstance(el, note.Note):
            _add_note(data, open_ties, at, el, el)
        elif isinstance(el, chord.Chord) and not isinstance(el, harmony.Harmony):
            data.has_chords = True
            for component in el.notes:
                _add_note(data, open_ties, at, component, el)
        elif isinstance(el, dynamics.Dynamic):
            data.dynamics.append((at, str(el.value)))
        elif isinstance(el, tempo.MetronomeMark):
            _add_tempo(data, at, el)
        elif isinstance(el, meter.TimeSignature):
            data.time_signatures.append((at, int(el.numerator), int(el.denominator)))
        elif isinstance(el, instrument.Instrument):
            data.instrument = data.instrument or el
            data.transposing = data.transposing or el.transposition is not None
        elif isinstance(el, spanner.Ottava):
            data.transposing = data.transposing or bool(el.transposing)


def _add_note(data: _PartData, open_ties: dict[int, int], start: float, n: Any, owner: Any) -> None:
    """Append one sounding note, or lengthen the tied note it continues."""
    duration = float(owner.duration.quarterLength)
    if owner.duration.isGrace or duration <= 0:
        return
    midi = int(n.pitch.midi)
    tie_type = n.tie.type if n.tie is not None else None
    keeps_open = tie_type in ("start", "continue")
    index = open_ties.pop(midi, None)
    if index is not None:
        held = data.notes[index]
        if abs(held[0] + held[1] - start) < _EPS:
            held[1] = start + duration - held[0]
            if keeps_open:
                open_ties[midi] = index
            return
    data.notes.append([start, duration, midi, _own_velocity(n, owner)])
    if keeps_open:
        open_ties[midi] = len(data.notes) - 1


def _add_tempo(data: _PartData, at: float, mark: Any) -> None:
    """Record a metronome mark, ranked: printed number, then playback-only, then text-implied.

    Finale exports often carry a playback-only 120 beside the printed mark (Maple Leaf
    Rag: printed quarter = 100), so a printed number wins at the same time.
    """
    if mark.number is not None and not mark.numberImplicit:
        rank, bpm = 0, mark.getQuarterBPM(useNumberSounding=False)
    elif mark.numberSounding is not None:
        rank, bpm = 1, mark.getQuarterBPM()
    else:
        rank, bpm = 2, mark.getQuarterBPM()
    if bpm and bpm > 0:
        data.tempos.append((at, rank, float(bpm)))


def _own_velocity(n: Any, owner: Any) -> int | None:
    """Velocity stored on the note (or its chord), without creating Volume objects."""
    for obj in (n, owner):
        if obj.hasVolumeInformation():
            velocity = obj.volume.velocity
            if velocity is not None:
                return int(velocity)
    return None


# ---------------------------------------------------------------------------------------
# Velocity from dynamics

# MIDI-convention levels (mf = 80, the default velocity).
_DYNAMIC_LEVELS = {
    "pppppp": 5, "ppppp": 8, "pppp": 10, "ppp": 20, "pp": 33, "p": 49, "mp": 64,
    "mf": 80, "f": 96, "ff": 112, "fff": 120, "ffff": 127, "fffff": 127,
}
# Accents: velocity of the notes struck at the mark, then the level that follows (or none).
_DYNAMIC_ACCENTS = {
    "sf": (112, None), "sfz": (112, None), "sffz": (120, None), "fz": (112, None),
    "rf": (104, None), "rfz": (104, None), "sfp": (112, 49), "fp": (96, 49),
    "sfpp": (112, 33), "fzp": (112, 49), "pf": (96, None),
}


class _Dynamics:
    """Velocity at a time from a part's dynamic marks: latest level, accents at onsets."""

    def __init__(self, marks: list[tuple[float, str]]):
        self.times: list[float] = []
        self.levels: list[int] = []
        self.accents: dict[float, int] = {}
        for at, value in sorted(marks, key=lambda m: m[0]):
            value = value.strip().lower()
            level = _DYNAMIC_LEVELS.get(value)
            if value in _DYNAMIC_ACCENTS:
                accent, level = _DYNAMIC_ACCENTS[value]
                self.accents[round(at, 6)] = accent
            if level is not None:
                self.times.append(at)
                self.levels.append(level)

    def velocity(self, at: float) -> int:
        accent = self.accents.get(round(at, 6))
        if accent is not None:
            return accent
        i = bisect.bisect_right(self.times, at + _EPS) - 1
        return self.levels[i] if i >= 0 else DEFAULT_VELOCITY


def _part_notes(data: _PartData, family: Family | None) -> list[Note]:
    if family is None:
        return []
    dyn = _Dynamics(data.dynamics)
    out = []
    for start, duration, midi, velocity in data.notes:
        pitch = fold_into_range(midi, family)
        if pitch is None:
            continue
        v = velocity if velocity is not None else dyn.velocity(start)
        out.append(Note(start, duration, pitch, min(max(int(v), 1), 127), family.name))
    return out


def _dedupe(notes: list[Note]) -> list[Note]:
    """One note per (family, pitch, onset): doublings in one family are one key press."""
    best: dict[tuple[str, int, float], Note] = {}
    for n in notes:
        k = (n.family, n.pitch, round(n.start, 6))
        if k not in best or n.duration > best[k].duration:
            best[k] = n
    return list(best.values())


# ---------------------------------------------------------------------------------------
# Families

_PLACEHOLDER_NAME = re.compile(
    r"(musicxml (part|default)|part|instrument|unnamed|untitled|staff|none|p)?\s*[\d().]*"
)
# Checked in order on the lowercased name; specific instruments precede voice ranges so
# "Bass Clarinet", "Contrabass" and "English Horn" don't become a bass voice or a horn.
_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("strings", r"contra\s*bass|double\s*bass|string\s*bass|violone|contrabasso|kontrabass"),
    ("piano", r"continuo|\bb\.\s*c\.|figured\s*bass"),  # harpsichord realizes it: GM 6
    ("strings", r"timpan|\btimp\b|pauken"),  # GM 47 sits in the strings group
    ("reed", r"clarinet|klarinett|oboe|hautbois|bassoon|basson|fagott|english\s*horn|"
             r"englischhorn|cor\s*anglais|sax|shawm|chalumeau"),
    ("pipe", r"flute|flauto|flote|floete|piccolo|recorder|blockflote|\bfife\b|pan\s*pipe|"
             r"ocarina|whistle"),
    ("strings", r"violin|violino|violon|geige|\bviola\b|viole|bratsche|violoncel|\bcello|"
                r"fiddle|\bharp\b|harfe|strings?\b|streicher"),
    ("organ", r"\borgan|organo|\borgel|orgue"),
    ("piano", r"piano|klavier|clavier|keyboard|harpsichord|cembalo|clavecin|clavichord"),
    ("brass", r"trumpet|trompet|tromba|cornet|horn|corno|\bcor\b|trombone|posaune|tuba|"
              r"euphonium|flugel|bugle|sackbut"),
    ("guitar", r"guitar|gitarre|guitare|\blute|laute|liuto|theorbo|mandolin|banjo|vihuela"),
    ("ensemble",
     r"soprano|sopran|mezzo|\balto\b|\balt\b|altus|contralto|tenor|\bbass\b|basso|bassus|"
     r"bariton|voice|\bvoce|\bvox\b|\bvoix\b|gesang|stimme|\bchant|cantus|\bcanto\b|"
     r"superius|discantus|quint|sext|septim|contra|triplum|motetus|medius|vagans|\bpars\b|"
     r"choir|chorus|\bcoro\b|\bchor\b|\bchoeur|vocal"),
)


def _family_for_part(data: _PartData) -> Family | None:
    """Names first, then instrument class, then GM program, then the fallbacks."""
    for raw in data.names:
        name = _ascii_fold(str(raw)).lower().strip()
        if _is_placeholder(name):
            continue
        for family, pattern in _NAME_RULES:
            if re.search(pattern, name):
                return FAMILY_BY_NAME[family]
    by_class = _family_for_instrument_class(data.instrument)
    if by_class is not None:
        return by_class
    program = getattr(data.instrument, "midiProgram", None)
    if program is not None and 0 <= program <= 127:
        return family_for_program(int(program))
    named = any(not _is_placeholder(_ascii_fold(str(n)).lower().strip()) for n in data.names)
    if not named and _is_single_line(data):
        return FAMILY_BY_NAME["pipe"]
    return FAMILY_BY_NAME["piano"]


def _is_placeholder(name: str) -> bool:
    """Names editors fill in by default ("MusicXML Part", "Instrument 5", "P1")."""
    return _PLACEHOLDER_NAME.fullmatch(name) is not None


def _family_for_instrument_class(inst: Any) -> Family | None:
    """The family a specific music21 Instrument subclass implies (None: generic)."""
    from music21 import instrument as m21inst

    if inst is None or type(inst) is m21inst.Instrument:
        return None
    checks = (
        (m21inst.Vocalist, "ensemble"),
        (m21inst.Organ, "organ"),
        (m21inst.KeyboardInstrument, "piano"),
        ((m21inst.Guitar, m21inst.Lute), "guitar"),
        (m21inst.StringInstrument, "strings"),
        ((m21inst.Flute, m21inst.Piccolo, m21inst.Recorder, m21inst.PanFlute,
          m21inst.Ocarina, m21inst.Whistle), "pipe"),
        (m21inst.WoodwindInstrument, "reed"),
        (m21inst.BrassInstrument, "brass"),
    )
    for cls, family in checks:
        if isinstance(inst, cls):
            return FAMILY_BY_NAME[family]
    return None


def _is_single_line(data: _PartData) -> bool:
    """No chords and no two notes sounding at once."""
    if data.has_chords:
        return False
    spans = sorted((s, s + d) for s, d, *_ in data.notes)
    return all(b[0] >= a[1] - _EPS for a, b in zip(spans, spans[1:]))


# ---------------------------------------------------------------------------------------
# Tempo and meter


def _tempos(parts: list[_PartData]) -> list[Tempo]:
    """Metronome marks of all parts, best-ranked per time (earlier parts win ties), changes only."""
    best: dict[float, tuple[int, int, float]] = {}
    for part_index, data in enumerate(parts):
        for time, rank, bpm in data.tempos:
            k = round(time, 6)
            candidate = (rank, part_index, bpm)
            if k not in best or candidate[:2] < best[k][:2]:
                best[k] = candidate
    out: list[Tempo] = []
    for time in sorted(best):
        bpm = best[time][2]
        if not out or out[-1].bpm != bpm:
            out.append(Tempo(time, bpm))
    return out


def _time_signatures(parts: list[_PartData]) -> list[TimeSignature]:
    """Time-signature changes of the first part that has any."""
    for data in parts:
        if data.time_signatures:
            out: list[TimeSignature] = []
            for time, num, den in sorted(data.time_signatures, key=lambda ts: ts[0]):
                if out and abs(out[-1].time - time) < _EPS:
                    out[-1] = TimeSignature(out[-1].time, num, den)
                elif not out or (out[-1].numerator, out[-1].denominator) != (num, den):
                    out.append(TimeSignature(time, num, den))
            return out
    return []
