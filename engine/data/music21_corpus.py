"""Which works of the music21 corpus there are: listing, split groups (no parsing).

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

Style labels come from `music21_styles`.

Split groups: movements of one multi-movement work, Palestrina mass movements (by the
mass name in the Humdrum header), Bach chorales on one chorale text (music21's chorale
lists) and folk tunes sharing a normalized, non-generic title share a group, so the
train/validation/test split never separates versions of the same music.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .music21_styles import _STYLE_WORD, _ascii_fold, _norm_text, _style_for_entry

KEY_PREFIX = "music21/"

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
