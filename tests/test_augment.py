import numpy as np
import pytest

from musebridge.engine.augment import augment, scale_velocity, stretch_time, transpose, transpose_range
from musebridge.engine.events import Note, Piece
from musebridge.engine.tokenizer import decode_tokens, encode_piece
from musebridge.engine.vocab import VocabConfig, Vocabulary


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
