import numpy as np
import pytest

from musebridge.engine.data.augment import REVOICE_FAMILIES, augment, revoice, scale_velocity, stretch_time, transpose, transpose_range
from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.tokenizer import decode_tokens, encode_piece
from musebridge.engine.music.vocab import VocabConfig, Vocabulary


def _piece():
    return Piece(notes=[Note(0, 1, 60, 80, "piano"), Note(1, 1, 100, 40, "piano"), Note(0, 0.5, 30, 100, "bass"),
                        Note(0, 0.25, 36, 110, "drums")])


def test_transpose_moves_pitched_notes_only_and_stays_in_range(vocab):
    toks = encode_piece(_piece(), vocab)
    lo, hi = transpose_range(toks, vocab)
    assert (lo, hi) == (23 - 30, 108 - 100)  # bass floor and piano ceiling bound it
    d = decode_tokens(transpose(toks, vocab, 5), vocab)
    assert sorted((n.family, n.pitch) for n in d.notes) == [("bass", 35), ("drums", 36), ("piano", 65), ("piano", 105)]
    with pytest.raises(ValueError):
        transpose(toks, vocab, hi + 1)


def test_velocity_scaling_moves_bins_and_keeps_offs(vocab):
    toks = encode_piece(_piece(), vocab)
    louder = decode_tokens(scale_velocity(toks, vocab, 1.3), vocab)
    base = decode_tokens(toks, vocab)
    pairs = list(zip(sorted(base.notes, key=lambda n: (n.family, n.pitch)), sorted(louder.notes, key=lambda n: (n.family, n.pitch))))
    assert all(b.velocity <= l.velocity for b, l in pairs) and any(b.velocity < l.velocity for b, l in pairs)
    assert [(n.start, n.duration) for n in louder.notes] == [(n.start, n.duration) for n in base.notes]


def test_tempo_stretch_scales_seconds():
    vocab = Vocabulary(VocabConfig(time_mode="seconds"))
    toks = encode_piece(_piece(), vocab)
    slow = decode_tokens(stretch_time(toks, vocab, 1.5), vocab)
    base = decode_tokens(toks, vocab)
    assert max(n.end for n in slow.notes) == pytest.approx(1.5 * max(n.end for n in base.notes), abs=0.03)
    with pytest.raises(ValueError, match="seconds"):
        stretch_time(toks, Vocabulary(), 1.2)


def test_random_augment_keeps_tokens_valid():
    rng = np.random.default_rng(0)
    for cfg in (VocabConfig(), VocabConfig(time_mode="seconds")):
        vocab = Vocabulary(cfg)
        toks = encode_piece(_piece(), vocab)
        for _ in range(50):
            out = augment(toks, vocab, rng)
            d = decode_tokens(out, vocab)
            assert len(d.notes) == 4


def test_revoice_moves_one_melodic_part_whole_and_keeps_the_encoders_order(vocab):
    """A part re-voiced is the piece the tokenizer would write with that part on the new
    family: same notes and times, the instrument token moved, bass and drums untouched."""
    piece = Piece(notes=[Note(0, 1, 60, 80, "piano"), Note(0, 1, 64, 80, "piano"), Note(1, 1, 67, 70, "piano"),
                         Note(0, 2, 72, 90, "strings"), Note(0, 0.5, 30, 100, "bass"), Note(0, 0.25, 36, 110, "drums")],
                  style="pop")
    toks = encode_piece(piece, vocab)
    seen = set()
    for seed in range(40):
        out = revoice(toks, vocab, np.random.default_rng(seed))
        got = decode_tokens(out, vocab)
        moved = set(got.families) - set(piece.families)
        assert len(moved) == 1 and moved <= set(REVOICE_FAMILIES)
        (new,) = moved
        (old,) = set(piece.families) - set(got.families)
        assert old in ("piano", "strings")
        seen.add(old)
        want = Piece(notes=[Note(n.start, n.duration, n.pitch, n.velocity, new if n.family == old else n.family)
                            for n in piece.notes], style="pop")
        assert out.tolist() == encode_piece(want, vocab).tolist()  # the canonical order, prefix included
        lo, hi = min(n.pitch for n in piece.notes if n.family == old), max(n.pitch for n in piece.notes if n.family == old)
        f = vocab.families[vocab.family_index[new]]
        assert f.low <= lo and hi <= f.high
    assert seen == {"piano", "strings"}


def test_revoice_leaves_a_window_of_bass_and_drums_alone(vocab):
    toks = encode_piece(Piece(notes=[Note(0, 0.5, 30, 100, "bass"), Note(0, 0.25, 36, 110, "drums")]), vocab)
    assert revoice(toks, vocab, np.random.default_rng(0)).tolist() == toks.tolist()
