"""The music21 corpus as `Piece`s, read straight from parsed streams.

music21's own MIDI writer costs seconds a work, expands repeats and fails on some files,
so parsed streams are walked directly into notes, tempos and time signatures.

Listing (`list_corpus_works`) reads music21's core metadata bundle (no parsing) and keeps
one entry per playable work:
  * dropped: `.rntxt` analyses, `demos/` and `theoryExercises/`, the Essen `test*` files,
    whole-book ABC entries (a book is listed once per X: tune number instead), and
    duplicate encodings: the same path stem in several formats keeps the first of
    .mxl/.musicxml/.xml/.krn/.abc (Bach and Beethoven `.krn` twins), and O'Neill's
    (whose X: numbers are the book's tune numbers) keeps one file per tune number
    when overlapping files encode the same tune again.
  * an ABC file whose few X: entries all carry one title (the Josquin files) holds the
    voices of one piece, not a book: it is listed once and its voices read together.

Style labels (lowercase snake_case, one per composer or folk collection):
  * a composer with a corpus folder of their own gets that folder's label wherever they
    appear ("bach", "beethoven", "palestrina", "cpe_bach", "schumann_clara", ...);
    `normalize_style` maps metadata spellings ("J.S. Bach", "Bach, Johann Sebastian")
    onto them.
  * multi-composer collections keep a collection label: "trecento" (mostly anonymous or
    one-work composers; Ciconia's works there stay "ciconia") and "lead_sheet".
  * folk collections are labelled by tradition, a handful of labels: "folk_essen"
    (Essen, mostly German-speaking Europe), "folk_chinese" (Essen's han* files),
    "folk_irish" (O'Neill's 1850 and Essen's irl), "folk_scottish" (Aird's Airs and
    Essen's folkHaydn), "folk_american" (Ryan's Mammoth, the American fife book) and
    "folk_english" (Northumbrian minstrelsy, the Nottingham reels).

Split groups: movements of one multi-movement work, Palestrina mass movements (by the
mass name in the Humdrum header), Bach chorales on one chorale text (music21's chorale
lists) and folk tunes sharing a normalized, non-generic title share a group, so the
train/validation/test split never separates versions of the same music.

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

Parsing goes through `converter.parse(..., forceSource=True)`: music21 then neither
reads nor writes its pickle cache, so parallel workers never race on cache files.
"""

from __future__ import annotations

import bisect
import copy
import difflib
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .events import Note, Piece, Tempo, TimeSignature
from .families import FAMILY_BY_NAME, Family, family_for_program, fold_into_range

KEY_PREFIX = "music21/"
DEFAULT_VELOCITY = 80
_EPS = 1e-6

# ---------------------------------------------------------------------------------------
# Works and listing


@dataclass(frozen=True)
class CorpusWork:
    """One playable work of the music21 corpus, small enough to pickle to workers."""

    key: str  # unique, stable id, e.g. "music21/bach/bwv66.6", "music21/essenFolksong/altdeu10#3"
    path: str  # absolute path of the corpus file
    number: int | None  # X: tune number inside an ABC book, else None
    style: str  # lowercase snake_case style label (see module docstring)
    group: str  # split group: versions and movements of one piece share it


@dataclass(frozen=True)
class _Entry:
    """What listing needs from one metadata-bundle entry."""

    rel: str  # corpus-relative posix path
    number: int | None
    title: str
    composer: str

    @property
    def folder(self) -> str:
        return self.rel.split("/", 1)[0]

    @property
    def stem(self) -> str:
        return self.rel.rsplit(".", 1)[0]

    @property
    def ext(self) -> str:
        return self.rel.rsplit(".", 1)[-1].lower()


_SKIP_FOLDERS = frozenset({"demos", "theoryExercises"})
_SKIP_EXTENSIONS = frozenset({"rntxt", "rntext", "romantext", "rtxt"})
# Preferred encoding when one path stem exists in several formats.
_EXT_PREFERENCE = ("mxl", "musicxml", "xml", "krn", "abc")
# Collections whose X: numbers are tune numbers of the whole book (files may overlap).
_BOOK_NUMBERED = frozenset({"oneills1850"})
_FOLK_FOLDERS = frozenset(
    {"essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth", "miscFolk", "nottingham-dataset"}
)
_MAX_VOICE_FILE_ENTRIES = 8


def list_corpus_works() -> list[CorpusWork]:
    """Every playable work of music21's core corpus, sorted by key (no parsing)."""
    entries = _playable_entries(_bundle_entries())
    base = _corpus_dir()
    works = []
    for e in entries:
        key = KEY_PREFIX + e.stem + (f"#{e.number}" if e.number is not None else "")
        works.append(
            CorpusWork(
                key=key,
                path=str(base / e.rel),
                number=e.number,
                style=_style_for_entry(e),
                group=_group_for_entry(e, key),
            )
        )
    works.sort(key=lambda w: w.key)
    keys = [w.key for w in works]
    if len(set(keys)) != len(keys):
        raise RuntimeError("music21 corpus listing produced duplicate keys")
    return works


def _corpus_dir() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def _bundle_entries() -> list[_Entry]:
    """The core metadata bundle as plain records."""
    from music21.corpus import corpora

    bundle = corpora.CoreCorpus().metadataBundle
    # bundle[i] rebuilds a list per call, so iterating the bundle is quadratic: slice once.
    out = []
    for entry in bundle[:]:
        md = entry.metadata
        number = entry.number
        out.append(
            _Entry(
                rel=Path(entry.sourcePath).as_posix(),
                number=int(number) if number not in (None, "") else None,
                title=str(md.title or "") if md is not None else "",
                composer=str(md.composer or "") if md is not None else "",
            )
        )
    return out


def _playable_entries(entries: Iterable[_Entry]) -> list[_Entry]:
    """Apply the drop rules of the module docstring, deterministically."""
    kept = [e for e in entries if _is_music_entry(e)]
    by_file: dict[str, list[_Entry]] = defaultdict(list)
    for e in kept:
        by_file[e.rel].append(e)
    chosen: list[_Entry] = []
    for rel in sorted(by_file):
        chosen.extend(_entries_of_file(by_file[rel]))
    chosen = _drop_format_twins(chosen)
    return _drop_book_duplicates(chosen)


def _is_music_entry(e: _Entry) -> bool:
    if e.ext in _SKIP_EXTENSIONS or e.folder in _SKIP_FOLDERS:
        return False
    name = e.rel.rsplit("/", 1)[-1]
    return not (e.folder == "essenFolksong" and name.startswith("test"))


def _entries_of_file(file_entries: list[_Entry]) -> list[_Entry]:
    """One entry per tune for a book, the whole-file entry for a single work."""
    numbered = sorted((e for e in file_entries if e.number is not None), key=lambda e: e.number)
    whole = [e for e in file_entries if e.number is None]
    if not numbered:
        return whole[:1]
    if _is_voices_file(numbered) and whole:
        return whole[:1]
    seen: set[int] = set()
    out = []
    for e in numbered:
        if e.number not in seen:
            seen.add(e.number)
            out.append(e)
    return out


def _is_voices_file(numbered: list[_Entry]) -> bool:
    """A few X: entries under one title outside folk books are one piece's voices."""
    if numbered[0].folder in _FOLK_FOLDERS:
        return False
    titles = {_norm_text(e.title) for e in numbered}
    return 2 <= len(numbered) <= _MAX_VOICE_FILE_ENTRIES and len(titles) == 1


def _drop_format_twins(entries: list[_Entry]) -> list[_Entry]:
    """Keep one encoding per (path stem, number)."""
    best: dict[tuple[str, int | None], _Entry] = {}
    for e in entries:
        k = (e.stem, e.number)
        if k not in best or _ext_rank(e.ext) < _ext_rank(best[k].ext):
            best[k] = e
    return [e for e in entries if best[(e.stem, e.number)] is e]


def _ext_rank(ext: str) -> int:
    return _EXT_PREFERENCE.index(ext) if ext in _EXT_PREFERENCE else len(_EXT_PREFERENCE)


def _drop_book_duplicates(entries: list[_Entry]) -> list[_Entry]:
    """Overlapping files of a book-numbered collection: keep one copy of each tune.

    The same tune number with a clearly different title is a mis-numbered different tune
    (seen in O'Neill's), so it stays.
    """
    first: dict[tuple[str, int], list[_Entry]] = defaultdict(list)
    out = []
    for e in entries:  # sorted by path already, so the first file wins
        if e.folder not in _BOOK_NUMBERED or e.number is None:
            out.append(e)
            continue
        same = first[(e.folder, e.number)]
        if any(_similar_titles(e.title, other.title) for other in same):
            continue
        same.append(e)
        out.append(e)
    return out


def _similar_titles(a: str, b: str) -> bool:
    """Same tune despite spelling: close strings, or one title's words inside the other's."""
    a, b = _tune_title_key(a), _tune_title_key(b)
    if not a or not b:
        return a == b
    words_a, words_b = set(a.split()), set(b.split())
    if words_a <= words_b or words_b <= words_a:
        return True
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


# ---------------------------------------------------------------------------------------
# Style labels

# Folder -> label for folders that name one composer or one collection.
_FOLDER_STYLE = {
    "bach": "bach",
    "beach": "beach",
    "beethoven": "beethoven",
    "chopin": "chopin",
    "ciconia": "ciconia",
    "corelli": "corelli",
    "cpebach": "cpe_bach",
    "handel": "handel",
    "haydn": "haydn",
    "johnson_j_r": "johnson",
    "joplin": "joplin",
    "josquin": "josquin",
    "leadSheet": "lead_sheet",
    "liliuokalani": "liliuokalani",
    "luca": "luca",
    "lusitano": "lusitano",
    "monteverdi": "monteverdi",
    "mozart": "mozart",
    "palestrina": "palestrina",
    "schoenberg": "schoenberg",
    "schubert": "schubert",
    "schumann_clara": "schumann_clara",
    "schumann_robert": "schumann_robert",
    "trecento": "trecento",
    "verdi": "verdi",
    "weber": "weber",
    "webern": "webern",
    "essenFolksong": "folk_essen",
    "oneills1850": "folk_irish",
    "airdsAirs": "folk_scottish",
    "ryansMammoth": "folk_american",
    "nottingham-dataset": "folk_english",
}
# Files inside a folk folder whose tradition differs from the folder's.
_FILE_STYLE = (
    ("essenFolksong/han", "folk_chinese"),
    ("essenFolksong/irl", "folk_irish"),
    ("essenFolksong/folkHaydn", "folk_scottish"),  # the Scottish songs Haydn arranged
    ("miscFolk/americanfife", "folk_american"),
    ("miscFolk/northumbrian", "folk_english"),
    ("miscFolk/", "folk_english"),
)
# Composer spellings -> label; first match wins, so specific names precede general ones.
_COMPOSER_ALIASES: tuple[tuple[str, str], ...] = (
    ("cpe_bach", r"c\s*\.?\s*p\s*\.?\s*e\s*\.?\s*bach|carl\s+philipp\s+emanuel|cpe_?bach"),
    ("bach", r"\bbach\b|j\s*\.?\s*s\s*\.?\s*bach|johann\s+sebastian"),
    ("schumann_clara", r"clara\s+(wieck\s+)?schumann|schumann[\s,_]+clara|clara\s+wieck"),
    ("schumann_robert", r"schumann"),
    ("beethoven", r"beethoven"),
    ("mozart", r"mozart"),
    ("haydn", r"haydn"),
    ("handel", r"handel|haendel"),
    ("palestrina", r"palestrina"),
    ("monteverdi", r"monteverdi"),
    ("josquin", r"josquin|des\s+pr[eé]z"),
    ("ciconia", r"ciconia"),
    ("chopin", r"chopin"),
    ("corelli", r"corelli"),
    ("schubert", r"schubert"),
    ("schoenberg", r"schoenberg|schonberg"),
    ("webern", r"webern"),
    ("weber", r"\bweber\b"),
    ("verdi", r"verdi"),
    ("joplin", r"joplin"),
    ("beach", r"\bbeach\b"),
    ("johnson", r"rosamond\s+johnson|johnson_j_r"),
    ("liliuokalani", r"liliuokalani"),
    ("lusitano", r"lusitano"),
)
_STYLE_WORD = re.compile(r"[a-z0-9]+")
_TRIM_PATTERNS = (r"\(.*?\)", r"\\\w+", r"\b1[0-9]{3}\b.*$", r"\bop\b.*$")


def normalize_style(name: str) -> str | None:
    """One lowercase snake_case label per composer, however the name is spelled.

    "J.S. Bach", "Bach, Johann Sebastian" and "bach" all give "bach"; an unknown name
    gives its surname ("Francesco Landini" -> "landini"); anonymous/empty gives None.
    """
    text = _ascii_fold(name).lower().replace("_", " ")
    if not text.strip():
        return None
    for label, pattern in _COMPOSER_ALIASES:
        if re.search(pattern, text):
            return label
    if re.search(r"\banon", text) or text.strip() in {"trad", "traditional", "unknown"}:
        return None
    return _surname_label(text)


def _surname_label(text: str) -> str | None:
    """Surname of a free-form name: before a comma, else the last word."""
    text = text.split("\n", 1)[0]
    for pattern in _TRIM_PATTERNS:
        text = re.sub(pattern, " ", text)
    if "," in text:
        text = text.split(",", 1)[0]
    words = [w for w in _STYLE_WORD.findall(text) if len(w) > 1 or w.isdigit()]
    return words[-1] if words else None


def _style_for_entry(e: _Entry) -> str:
    for prefix, label in _FILE_STYLE:
        if e.rel.startswith(prefix):
            return label
    if e.folder == "trecento" and normalize_style(e.composer) == "ciconia":
        return "ciconia"
    if e.folder in _FOLDER_STYLE:
        return _FOLDER_STYLE[e.folder]
    return normalize_style(e.composer) or _snake(e.folder)


def _snake(text: str) -> str:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", _ascii_fold(text))
    return "_".join(_STYLE_WORD.findall(text.lower())) or "unknown"


# ---------------------------------------------------------------------------------------
# Split groups

_GENERIC_TITLE_WORDS = frozenset(
    "a an the of and do ditto another air airs irish scotch scottish english welsh tune "
    "song untitled unknown anonymous quick step slow march reel jig hornpipe strathspey "
    "waltz minuet minuetto allemanda allemande cotillon cotillion country dance polka "
    "gavotte rondo fling set clog schottische slide lied setting version part no "
    "regt regiment variation variations".split()
)
_DANCE_WORDS = frozenset(
    "reel jig hornpipe strathspey waltz polka clog schottische fling slide march "
    "quickstep air".split()
)


def _group_for_entry(e: _Entry, key: str) -> str:
    parts = e.rel.split("/")
    if e.folder in _FOLK_FOLDERS:
        title = _tune_title_key(e.title)
        return f"{KEY_PREFIX}folk/{title.replace(' ', '_')}" if title else key
    if e.folder == "bach":  # harmonizations of one chorale; else a file and its variants
        title = _chorale_title(_bwv_of(e.stem))
        if title:
            return f"{KEY_PREFIX}bach/chorale/{title}"
        return KEY_PREFIX + re.sub(r"-\w+$", "", e.stem)
    if e.folder == "palestrina":
        mass = _palestrina_mass(e.rel)
        return f"{KEY_PREFIX}palestrina/mass/{mass}" if mass else key
    if e.folder == "trecento":
        title = "_".join(_STYLE_WORD.findall(_ascii_fold(e.title).lower()))
        return f"{KEY_PREFIX}trecento/title/{title}" if title else key
    if len(parts) >= 3:  # folder/work/movement
        return KEY_PREFIX + "/".join(parts[:2])
    return key


def _tune_title_key(title: str) -> str:
    """A folk title reduced to what identifies the tune; '' when it is generic.

    Drops articles, dance types, setting numbers and punctuation so "The Liverpool
    Hornpipe." and "Liverpool hornpipe" meet; titles made only of generic words ("Irish
    Air", "A Do.", "Quick Step 42d. Regt.") identify nothing and give ''.
    """
    text = _ascii_fold(title).lower().replace("'", "").replace("\u2019", "")
    words = _STYLE_WORD.findall(text)
    words = [w for w in words if not re.fullmatch(r"\d+(st|nd|rd|th|d)?", w)]
    if all(w in _GENERIC_TITLE_WORDS for w in words):
        return ""
    return " ".join(w for w in words if w not in {"the", "a", "an"} and w not in _DANCE_WORDS
                    and w not in {"setting", "version"})


def _bwv_of(stem: str) -> str:
    """'bach/bwv248.12-2' -> '248.12-2'."""
    return stem.rsplit("/", 1)[-1].removeprefix("bwv")


def _chorale_title(bwv: str) -> str | None:
    """Slug of a chorale's title by BWV number; suffix variants ('69.6-a') use the base."""
    titles = _chorale_titles()
    return titles.get(bwv) or titles.get(re.sub(r"-\w+$", "", bwv))


@lru_cache(maxsize=1)
def _chorale_titles() -> dict[str, str]:
    """BWV number as in file names -> slug of the chorale title (music21's two lists)."""
    from music21.corpus import chorales

    titles: dict[str, str] = {}
    for bwv, info in chorales.ChoraleList().byBWV.items():
        titles[str(bwv)] = info["title"]
    for bwv, info in chorales.ChoraleListRKBWV().byBWV.items():
        titles.setdefault(str(bwv), info["title"])
    out: dict[str, str] = {}
    for bwv, title in titles.items():
        slug = "_".join(_STYLE_WORD.findall(_ascii_fold(title).lower()))
        out[bwv] = slug
    return out


def _palestrina_mass(rel: str) -> str:
    """Slug of the mass named in a Humdrum file's !!!OPR header line, or ''."""
    try:
        with open(_corpus_dir() / rel, encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(40), f):
                if line.startswith("!!!OPR"):
                    name = line.split(":", 1)[-1]
                    return "_".join(_STYLE_WORD.findall(_ascii_fold(name).lower()))
    except OSError:
        return ""
    return ""


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _norm_text(text: str) -> str:
    return " ".join(_STYLE_WORD.findall(_ascii_fold(text).lower()))


# ---------------------------------------------------------------------------------------
# Parsing


def read_corpus_work(work: CorpusWork) -> Piece:
    """Parse one corpus work and convert it; raises whatever music21 raises."""
    score = parse_corpus_work(work)
    return _convert(score, style=work.style, name=work.key, owned=True)


def parse_corpus_work(work: CorpusWork) -> Any:
    """The parsed music21 stream of one work, bypassing music21's pickle cache.

    `forceSource=True` makes music21 skip both reading and writing its cache, so
    parallel workers never race on cache files; for an ABC book music21 cuts out the
    one tune's text (`ABCFile.extractReferenceNumber`) before tokenizing.
    """
    from music21 import converter

    return converter.parse(work.path, number=work.number, forceSource=True)


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
