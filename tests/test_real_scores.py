"""Round trip on real scores from the music21 corpus: score -> events -> tokens -> events
-> MIDI file -> events keeps every note (pitch and family exact, onset and duration
within one tick, velocity within its bin), in every time mode."""

import pytest

pytest.importorskip("music21")

from conftest import assert_round_trip  # noqa: E402
from musebridge.engine.music.midi_file import read_midi, write_midi  # noqa: E402
from musebridge.engine.data.music21_source import list_corpus_works, read_corpus_work  # noqa: E402
from musebridge.engine.music.tokenizer import decode_tokens, encode_piece  # noqa: E402
from musebridge.engine.music.vocab import VocabConfig, Vocabulary  # noqa: E402

WORKS = [
    "music21/bach/bwv66.6",  # four-voice chorale
    "music21/bach/bwv1.6",  # chorale with instruments doubling voices
    "music21/essenFolksong/altdeu10#3",  # folk tune from an ABC book
    "music21/monteverdi/madrigal.3.1",  # five voices, many unisons
    "music21/joplin/maple_leaf_rag",  # piano, dense, tempo mark
]


@pytest.fixture(scope="module")
def pieces():
    works = {w.key: w for w in list_corpus_works()}
    found = [works[k] for k in WORKS if k in works]
    assert len(found) >= 4, "corpus works used by this test went missing"
    return [read_corpus_work(w) for w in found]


@pytest.mark.parametrize("config", [VocabConfig(), VocabConfig(ticks_per_beat=4), VocabConfig(time_mode="seconds")],
                         ids=["beats12", "beats4", "seconds"])
def test_corpus_round_trip_through_midi(pieces, config, tmp_path):
    vocab = Vocabulary(config)
    for piece in pieces:
        assert len(piece.notes) > 20, piece.name
        decoded = decode_tokens(encode_piece(piece, vocab), vocab)
        path = tmp_path / "rt.mid"
        write_midi(decoded, path)
        assert_round_trip(piece, read_midi(path), vocab)
