"""Where pieces come from: the music21 corpus, folders of MIDI files, and POP909 songs
arranged for a band (`engine/data/band_source.py`).

A source lists `PieceTask`s cheaply (no parsing); `load_piece` runs one task in a
worker process. Every task carries its style label and its split group -- the key that
a piece and its other versions share, so train/val/test never split them.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from musebridge.errors import DataError

from ..music.events import Piece
from ..music.midi_file import read_midi
from .band_parts import groove_index
from .band_source import DEFAULT_LABEL, SOURCE, SPEC_PREFIX, find_groove, read_band_song, read_piano_song
from .music21_source import CorpusWork, read_corpus_work
from .pop909 import song_files

MIDI_SUFFIXES = {".mid", ".midi", ".smf", ".kar"}
SPLITS = ("train", "val", "test")
# Collections whose natural label is not their folder name.
COLLECTION_LABELS = {"pop909": "pop"}
_VERSION_SUFFIX = re.compile(r"([ _.\-]*(v|ver|version|take|alt)[ _.\-]*\d+|[ _]*\(\d+\)|-\d{1,2})$", re.I)


@dataclass(frozen=True)
class PieceTask:
    """One piece to read: where it is, its labels, and (optionally) a fixed split."""

    key: str  # unique and stable across builds: the resume key
    source: str  # "music21" or the folder's collection name
    kind: str  # "music21", "midi", "pop909" (a song beside its beat annotations) or "pop909_band"
    path: str
    style: str
    group: str  # split group: a piece and its versions share it
    number: int | None = None  # work inside a multi-work music21 file
    split: str | None = None  # the collection's own split, when it has one
    drums: str | None = None  # pop909_band: the Groove folder its drums come from


def normalize_label(text: str) -> str:
    """Lowercase snake_case label ("Afro-Cuban Jazz" -> "afro_cuban_jazz")."""
    label = re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")
    return label or "unknown"


def split_of(group: str, val: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split of a group key: the same group lands in the same split forever."""
    h = int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test else "val" if h < test + val else "train"


def music21_tasks() -> list[PieceTask]:
    """Every work of the music21 corpus (needs `pip install music21`)."""
    try:
        from .music21_source import list_corpus_works
    except ImportError:
        raise DataError("the music21 source needs music21: pip install 'musebridge[train]'") from None
    return [
        PieceTask(w.key, "music21", "music21", w.path, w.style, w.group, w.number)
        for w in list_corpus_works()
    ]


def midi_folder_tasks(folder: str | Path, label: str | None = None) -> list[PieceTask]:
    """Every MIDI file under a folder; labels from the folder name or its own index.

    A Groove-style `info.csv` (columns midi_filename, style, split) gives each file its
    style (the part before the slash, e.g. "funk" of "funk/groove1") and its official
    split; otherwise the style is `label`, or the collection's natural label, or the
    folder's name.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"MIDI source {folder} is not a folder; pass a folder of .mid files or 'music21'")
    collection = normalize_label(root.resolve().name)
    default_style = normalize_label(label) if label else COLLECTION_LABELS.get(collection, collection)
    index = _read_info_csv(root)
    tasks = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()):
        rel = path.relative_to(root).as_posix()
        style, split = default_style, None
        if rel in index:
            style_text, split = index[rel]
            if not label and style_text:
                style = normalize_label(style_text.split("/")[0])
        # a POP909 song (beat annotations beside it) is read on its annotated bars, not its file's 1/4 time
        kind = "pop909" if (path.parent / "beat_midi.txt").is_file() else "midi"
        tasks.append(PieceTask(f"{collection}/{rel}", collection, kind, str(path), style,
                               f"{collection}/{version_group(rel)}", split=split))
    return tasks


def version_group(rel: str) -> str:
    """The piece a file is a version of: folder plus stem without version suffixes.

    POP909 keeps alternative versions in `<song>/versions/`; many collections name them
    `song_v2.mid` or `song (2).mid`.
    """
    parts = rel.split("/")
    folder = [p for p in parts[:-1] if p.lower() != "versions"]
    stem = parts[-1].rsplit(".", 1)[0]
    stem = _VERSION_SUFFIX.sub("", stem) or stem
    if len(parts) > 1 and parts[-2].lower() == "versions":
        return "/".join(folder)  # versions/ belongs to its song folder
    return "/".join([*folder, stem.lower()])


def _read_info_csv(root: Path) -> dict[str, tuple[str, str | None]]:
    info = root / "info.csv"
    if not info.is_file():
        return {}
    out = {}
    with info.open(newline="") as f:
        for row in csv.DictReader(f):
            name = row.get("midi_filename")
            if not name:
                continue
            split = {"validation": "val"}.get(row.get("split", ""), row.get("split")) or None
            out[name] = (row.get("style", ""), split if split in SPLITS else None)
    return out


def pop909_band_tasks(spec: str) -> list[PieceTask]:
    """`pop909-band:POP909_DIR[,GROOVE_DIR][=LABEL]`: every POP909 song as a band arrangement.

    Drums come from GROOVE_DIR (default: a `groove` folder beside POP909_DIR). A song keeps
    the split group the plain folder source gives it for the same POP909_DIR, so its piano
    and band versions always share a split; its drums come from Groove beats of that
    split. The label defaults to POP909's own, "pop": a new label would be a style token
    the shipped vocabulary lacks, and fine-tuning (`train --init`) needs the same vocabulary.
    """
    body, _, label = spec[len(SPEC_PREFIX):].partition("=")
    folder, _, groove = body.partition(",")
    root = Path(folder).expanduser()
    if not folder or not root.is_dir():
        raise DataError(f"pop909-band source {folder or '(none)'} is not a folder; pass "
                        "pop909-band:POP909_DIR (the folder with POP909's song folders)")
    drums = Path(groove).expanduser() if groove else find_groove(root)
    if drums is None or not drums.is_dir():
        where = groove or f"no groove folder beside {folder}"
        raise DataError(f"pop909-band needs the Groove MIDI Dataset for its drums: {where} is not a folder; "
                        "pass pop909-band:POP909_DIR,GROOVE_DIR")
    groove_index(str(drums))  # a Groove folder without its info.csv fails here, once
    collection = normalize_label(root.resolve().name)
    style = normalize_label(label) if label else DEFAULT_LABEL
    tasks = []
    for path in song_files(root):
        rel = path.relative_to(root).as_posix()
        group = f"{collection}/{version_group(rel)}"
        tasks.append(PieceTask(f"{SOURCE}/{rel}", SOURCE, SOURCE, str(path), style, group,
                               split=split_of(group), drums=str(drums)))
    return tasks


def tasks_for_source(source: str) -> list[PieceTask]:
    """`music21`, `DIR`, `DIR=LABEL` (a folder with one style label for all files), or
    `pop909-band:POP909_DIR[,GROOVE_DIR][=LABEL]` (POP909 arranged for a band)."""
    if source == "music21":
        return music21_tasks()
    if source.startswith(SPEC_PREFIX):
        return pop909_band_tasks(source)
    folder, _, label = source.partition("=")
    return midi_folder_tasks(folder, label or None)


def load_piece(task: PieceTask) -> Piece:
    """Parse one task into a Piece (runs in a worker process)."""
    if task.kind == "music21":
        piece = read_corpus_work(CorpusWork(task.key, task.path, task.number, task.style, task.group))
    elif task.kind == "pop909":
        piece = read_piano_song(task.path, task.style)
    elif task.kind == "pop909_band":
        path = Path(task.path)
        song_id = f"{path.parent.name}/{path.stem}"
        piece = read_band_song(path, song_id, task.drums, task.split or split_of(task.group), task.style)
    else:
        piece = read_midi(task.path, style=task.style)
    piece.style = task.style
    piece.name = task.key
    return piece
