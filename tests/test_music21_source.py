"""The music21 corpus reader: listing, labels, and stream -> Piece conversion.

Only a handful of small corpus works are parsed, so the file runs in a few seconds.
"""

from __future__ import annotations

import pytest

music21 = pytest.importorskip("music21")

from music21 import chord, converter, dynamics, instrument, meter, note, stream, tempo  # noqa: E402

from musebridge.engine.data.music21_source import (  # noqa: E402
    CorpusWork,
    list_corpus_works,
    normalize_style,
    read_corpus_work,
    score_to_piece,
)


@pytest.fixture(scope="module")
def works() -> list[CorpusWork]:
    return list_corpus_works()


@pytest.fixture(scope="module")
def by_key(works: list[CorpusWork]) -> dict[str, CorpusWork]:
    return {w.key: w for w in works}


def _part(*elements: tuple[float, object], name: str | None = None) -> stream.Part:
    part = stream.Part()
    if name:
        part.partName = name
    for offset, el in elements:
        part.insert(offset, el)
    return part


def _note(name: str, ql: float, tie: str | None = None) -> note.Note:
    n = note.Note(name, quarterLength=ql)
    if tie:
        n.tie = music21.tie.Tie(tie)
    return n


# --- listing -----------------------------------------------------------------------------


def test_listing_is_large_unique_sorted_and_stable(works: list[CorpusWork]) -> None:
    keys = [w.key for w in works]
    assert len(works) > 10_000
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys)
    assert works == list_corpus_works()


def test_listing_drops_analyses_demos_and_tests(works: list[CorpusWork]) -> None:
    paths = [w.path.replace("\\", "/") for w in works]
    assert not any(p.endswith(".rntxt") for p in paths)
    assert not any("/demos/" in p or "/theoryExercises/" in p for p in paths)
    assert not any("/essenFolksong/test" in p for p in paths)


def test_abc_books_are_listed_per_tune(works: list[CorpusWork]) -> None:
    essen = [w for w in works if w.path.endswith("essenFolksong/altdeu10.abc")]
    assert len(essen) > 100
    assert all(w.number is not None and w.key.endswith(f"#{w.number}") for w in essen)
    whole_files = [w for w in works if w.path.endswith(".abc") and w.number is None]
    for w in whole_files:  # single-tune files and the Josquin voice files, never a book
        with open(w.path, encoding="utf-8") as f:
            tunes = sum(line.startswith("X:") for line in f)
        assert tunes <= 1 or "/josquin/" in w.path, w.key


def test_duplicate_encodings_dropped_and_versions_grouped(by_key: dict[str, CorpusWork]) -> None:
    assert by_key["music21/bach/bwv277"].path.endswith(".mxl")  # the .krn twin is dropped
    josquin = [k for k in by_key if k.startswith("music21/josquin/milleRegrets")]
    assert josquin == ["music21/josquin/milleRegrets"]  # one piece, not four voices
    movements = {by_key[f"music21/beethoven/opus59no1/movement{i}"].group for i in range(1, 5)}
    assert movements == {"music21/beethoven/opus59no1"}


def test_styles_are_normalized_labels(
    works: list[CorpusWork], by_key: dict[str, CorpusWork]
) -> None:
    labels = {w.style for w in works}
    assert all(label == label.lower() and " " not in label for label in labels)
    assert {w.style for w in works if "/bach/" in w.path} == {"bach"}
    assert by_key["music21/essenFolksong/altdeu10#3"].style == "folk_essen"
    assert by_key["music21/oneills1850/0001-0050#1"].style == "folk_irish"
    assert len([label for label in labels if label.startswith("folk")]) <= 6


@pytest.mark.parametrize(
    "spelling, label",
    [
        ("J.S. Bach", "bach"),
        ("J. S. Bach", "bach"),
        ("Bach, Johann Sebastian", "bach"),
        ("bach", "bach"),
        ("Carl Philipp Emanuel Bach", "cpe_bach"),
        ("L. van Beethoven", "beethoven"),
        ("Beethoven, Ludwig van", "beethoven"),
        ("Josquin des Prez \\footnotemark", "josquin"),
        ("Palestrina, Giovanni Perluigi da", "palestrina"),
        ("Francesco Landini", "landini"),
        ("Anonymous I-Rvat 1419", None),
        ("", None),
    ],
)
def test_normalize_style(spelling: str, label: str | None) -> None:
    assert normalize_style(spelling) == label


# --- corpus works ------------------------------------------------------------------------


def test_bach_chorale_matches_music21_pitches(by_key: dict[str, CorpusWork]) -> None:
    work = by_key["music21/bach/bwv66.6"]
    piece = read_corpus_work(work)
    assert piece.name == work.key and piece.style == "bach"
    assert piece.families == ["ensemble"]

    score = converter.parse(work.path, forceSource=True)
    assert len(score.parts) == 4
    expected = set()
    for part in score.parts:
        for n in part.flatten().notes:
            if n.tie is None or n.tie.type == "start":  # onsets only
                expected.add((float(n.getOffsetInHierarchy(part)), n.pitch.midi))
    assert {(n.start, n.pitch) for n in piece.notes} == expected
    assert piece.time_signatures and piece.time_signatures[0].time == 0.0


def test_folk_tune_plays_as_pipe(by_key: dict[str, CorpusWork]) -> None:
    piece = read_corpus_work(by_key["music21/essenFolksong/altdeu10#3"])
    assert piece.families == ["pipe"] and piece.style == "folk_essen"
    assert len(piece.notes) > 10
    starts = [n.start for n in piece.notes]
    assert starts == sorted(starts) and starts[0] >= 0.0


def test_josquin_voices_read_together(by_key: dict[str, CorpusWork]) -> None:
    piece = read_corpus_work(by_key["music21/josquin/milleRegrets"])
    assert piece.families == ["ensemble"]
    # four voices sound together: some onset holds at least three pitches
    onsets: dict[float, int] = {}
    for n in piece.notes:
        onsets[n.start] = onsets.get(n.start, 0) + 1
    assert max(onsets.values()) >= 3


# --- conversion of built streams -----------------------------------------------------------


def test_ties_merge_into_one_note() -> None:
    m1, m2 = stream.Measure(number=1), stream.Measure(number=2)
    m1.insert(0, meter.TimeSignature("2/4"))
    m1.insert(0, _note("C4", 1.0))
    m1.insert(1, _note("E4", 1.0, "start"))
    m2.insert(0, _note("E4", 0.5, "continue"))
    m2.insert(0.5, _note("E4", 0.5, "stop"))
    m2.insert(1, _note("F4", 0.5, "start"))  # a "tie" to another pitch is a slur: no merge
    m2.insert(1.5, _note("G4", 0.5, "stop"))
    part = stream.Part()
    part.append([m1, m2])
    piece = score_to_piece(part)
    got = [(n.start, n.duration, n.pitch) for n in piece.notes]
    assert got == [(0.0, 1.0, 60), (1.0, 2.0, 64), (3.0, 0.5, 65), (3.5, 0.5, 67)]
    assert [(t.time, t.numerator, t.denominator) for t in piece.time_signatures] == [(0.0, 2, 4)]


def test_chords_expand_and_tie_per_pitch() -> None:
    first = chord.Chord(["C4", "G4"], quarterLength=1.0)
    first.notes[1].tie = music21.tie.Tie("start")
    second = chord.Chord(["D4", "G4"], quarterLength=1.0)
    second.notes[1].tie = music21.tie.Tie("stop")
    piece = score_to_piece(_part((0.0, first), (1.0, second), name="Piano"))
    got = sorted((n.start, n.duration, n.pitch) for n in piece.notes)
    assert got == [(0.0, 1.0, 60), (0.0, 2.0, 67), (1.0, 1.0, 62)]
    assert piece.families == ["piano"]


def test_velocities_from_dynamics_and_note_volume() -> None:
    loud = _note("D4", 1.0)
    loud.volume.velocity = 30
    part = _part(
        (0.0, dynamics.Dynamic("p")),
        (0.0, _note("C4", 1.0)),
        (1.0, loud),
        (2.0, dynamics.Dynamic("f")),
        (2.0, _note("E4", 1.0)),
        (3.0, _note("F4", 1.0)),
        name="Violin",
    )
    piece = score_to_piece(part)
    assert [n.velocity for n in piece.notes] == [49, 30, 96, 96]
    plain = score_to_piece(_part((0.0, _note("C4", 1.0)), name="Violin"))
    assert plain.notes[0].velocity == 80


def test_families_from_names_programs_and_fallbacks() -> None:
    def family(part: stream.Part) -> str:
        return score_to_piece(part).notes[0].family

    canto = _part((0.0, instrument.Piano()), (0.0, _note("C5", 1.0)), name="Canto")
    assert family(canto) == "ensemble"  # a voice name beats Finale's default piano program
    assert family(_part((0.0, _note("C3", 1.0)), name="Violoncello")) == "strings"
    assert family(_part((0.0, _note("C4", 1.0)), name="Bass Clarinet")) == "reed"
    trumpet = _part((0.0, instrument.Trumpet()), (0.0, _note("C5", 1.0)))
    assert family(trumpet) == "brass"
    melody = _part((0.0, _note("C4", 1.0)), (1.0, _note("D4", 1.0)))
    assert family(melody) == "pipe"
    unnamed_chords = _part((0.0, chord.Chord(["C4", "E4"], quarterLength=1.0)))
    assert family(unnamed_chords) == "piano"


def test_out_of_range_pitches_fold_and_grace_notes_skip() -> None:
    grace = _note("E4", 1.0).getGrace()
    part = _part((0.0, _note("C2", 1.0)), (1.0, grace), (1.0, _note("D4", 1.0)))
    piece = score_to_piece(part)  # unnamed single line -> pipe, lowest pitch 48
    assert [(n.start, n.pitch) for n in piece.notes] == [(0.0, 48), (1.0, 62)]


def test_tempo_and_absolute_offsets_across_parts() -> None:
    score = stream.Score()
    top = _part((0.0, tempo.MetronomeMark(number=120, referent=1.5)), (0.0, _note("G4", 4.0)),
                name="Soprano")
    low = _part((0.0, note.Rest(quarterLength=2.0)), (2.0, _note("C3", 2.0)), name="Bass")
    score.insert(0, top)
    score.insert(0, low)
    piece = score_to_piece(score, style="bach", name="x")
    assert [(t.time, t.bpm) for t in piece.tempos] == [(0.0, 180.0)]
    assert [(n.start, n.pitch) for n in piece.notes] == [(0.0, 67), (2.0, 48)]
    assert piece.style == "bach" and piece.name == "x"


def test_transposing_instrument_sounds_without_touching_input() -> None:
    part = _part((0.0, instrument.Clarinet()), (0.0, _note("D4", 1.0)))
    part.atSoundingPitch = False
    piece = score_to_piece(part)
    assert [(n.pitch, n.family) for n in piece.notes] == [(60, "reed")]
    assert part.flatten().notes[0].pitch.midi == 62  # input left at written pitch


def test_marks_on_the_score_itself_count() -> None:
    score = stream.Score()
    score.insert(0, tempo.MetronomeMark(number=90))
    score.insert(0, _part((0.0, _note("C4", 1.0)), name="Flute"))
    piece = score_to_piece(score)
    assert [(t.time, t.bpm) for t in piece.tempos] == [(0.0, 90.0)]
    assert [(n.pitch, n.family) for n in piece.notes] == [(60, "pipe")]
