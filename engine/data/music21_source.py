"""The music21 corpus as `Piece`s, read straight from parsed streams.

music21's own MIDI writer costs seconds a work, expands repeats and fails on some files,
so parsed streams are walked directly into notes, tempos and time signatures.

Listing lives in `music21_corpus` (style labels in `music21_styles`), conversion in
`music21_convert`; this module parses one work and re-exports the public names.

Parsing goes through `converter.parse(..., forceSource=True)`: music21 then neither
reads nor writes its pickle cache, so parallel workers never race on cache files.
"""

from __future__ import annotations

from typing import Any

from ..music.events import Piece
from .music21_convert import DEFAULT_VELOCITY, _convert, score_to_piece
from .music21_corpus import KEY_PREFIX, CorpusWork, list_corpus_works
from .music21_styles import normalize_style

__all__ = ["DEFAULT_VELOCITY", "KEY_PREFIX", "CorpusWork", "list_corpus_works", "normalize_style",
           "parse_corpus_work", "read_corpus_work", "score_to_piece"]

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
