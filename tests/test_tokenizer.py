"""Round trips and the streaming encoder/decoder."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import assert_round_trip
from musebridge.engine.music.events import DEFAULT_BPM, MAX_REST_BEATS, Note, NoteOff, NoteOn, Pedal, Piece, Tempo, TimeSignature
from musebridge.engine.music.families import FAMILIES
from musebridge.engine.music.tokenizer import StreamDecoder, StreamEncoder, decode_tokens, encode_events, encode_piece
from musebridge.engine.music.vocab import NOTE, VocabConfig, Vocabulary

VOCABS = {
    "beats12": Vocabulary(),
    "beats4": Vocabulary(VocabConfig(ticks_per_beat=4)),
    "seconds": Vocabulary(VocabConfig(time_mode="seconds")),
}


@st.composite
def note_lists(draw, max_notes=40):
    """Random notes; one family never holds one key twice at once (as on a MIDI channel)."""
    n = draw(st.integers(0, max_notes))
    notes = []
    for _ in range(n):
        f = draw(st.sampled_from(FAMILIES))
        pitch = draw(st.integers(0, 127))
        start = draw(st.floats(0, 64, allow_nan=False))
        dur = draw(st.floats(0, 8, allow_nan=False))
        vel = draw(st.integers(1, 127))
        notes.append(Note(start, dur, pitch, vel, f.name))
    return notes


@st.composite
def pieces(draw):
    notes = draw(note_lists())
    tempos = [Tempo(0.0, draw(st.floats(40, 240)))]
    if draw(st.booleans()):
        tempos.append(Tempo(draw(st.floats(1, 32)), draw(st.floats(40, 240))))
    return Piece(notes=notes, tempos=tempos, time_signatures=[TimeSignature(0.0, 4, 4)])


def _drop_same_key_overlaps(piece: Piece, slack: float) -> Piece:
    """Notes folded into range, keeping those whose key is free (with `slack` beats to
    spare) for their whole length."""
    kept: list[Note] = []
    for n in sorted(piece.notes, key=lambda n: n.start):
        from musebridge.engine.music.families import FAMILY_BY_NAME, fold_into_range

        p = fold_into_range(n.pitch, FAMILY_BY_NAME[n.family])
        if p is None:
            continue
        if any(m.family == n.family and fold_into_range(m.pitch, FAMILY_BY_NAME[m.family]) == p
               and m.start - slack < n.end and n.start - slack < m.end for m in kept):
            continue
        kept.append(Note(n.start, n.duration, p, n.velocity, n.family))
    return Piece(notes=kept, tempos=piece.tempos, time_signatures=piece.time_signatures)


def _rests_fit(piece: Piece, vocab: Vocabulary) -> bool:
    """No silence longer than the encoder keeps (MAX_REST_BEATS; longer ones are cut,
    tested in test_midi_file.py), with a tick to spare for rounding."""
    seconds = vocab.config.time_mode == "seconds"
    tm = piece.tempo_map()
    times = [0.0] + [tm.to_seconds(e.time) if seconds else e.time for e in piece.events()]
    limit = MAX_REST_BEATS * 60.0 / DEFAULT_BPM - 0.02 if seconds else MAX_REST_BEATS - 1.0 / vocab.config.ticks_per_beat
    return all(b - a <= limit for a, b in zip(times, times[1:]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces(), st.sampled_from(sorted(VOCABS)))
def test_round_trip_random_notes(piece, which):
    vocab = VOCABS[which]
    slack = 0.1 if which == "seconds" else 2.0 / vocab.config.ticks_per_beat
    piece = _drop_same_key_overlaps(piece, slack + 0.5)
    assume(_rests_fit(piece, vocab))
    tokens = encode_piece(piece, vocab)
    decoded = decode_tokens(tokens, vocab)
    assert_round_trip(piece, decoded, vocab)
    assert len(decoded.notes) == len(piece.notes)


@settings(max_examples=100, deadline=None)
@given(pieces())
def test_any_note_list_decodes_to_valid_midi(piece):
    """Overlaps, unisons, zero lengths: whatever goes in, what comes out closes every note
    and every onset of the input survives."""
    vocab = VOCABS["beats12"]
    assume(_rests_fit(piece, vocab))
    decoded = decode_tokens(encode_piece(piece, vocab), vocab)
    assert all(n.duration >= 1 / 12 - 1e-9 for n in decoded.notes)
    onsets_in = {(n.family, n.pitch, round(n.start * 12)) for n in _drop_same_key_overlaps(piece, -1e9).notes}
    onsets_out = {(n.family, n.pitch, round(n.start * 12)) for n in decoded.notes}
    assert onsets_in <= onsets_out
    # the same key never sounds twice at once
    by_key = {}
    for n in decoded.notes:
        by_key.setdefault((n.family, n.pitch), []).append(n)
    for notes in by_key.values():
        notes.sort(key=lambda n: n.start)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(notes, notes[1:]))


def test_restrike_and_unison_semantics(vocab):
    piece = Piece(notes=[
        Note(0, 2, 60, 80, "piano"),   # re-struck at 1 while sounding
        Note(1, 2, 60, 80, "piano"),
        Note(4, 1, 64, 80, "piano"),   # unison strike of two notes at 4: one note to the later release
        Note(4, 3, 64, 100, "piano"),
        Note(8, 0.001, 67, 80, "piano"),  # shorter than a tick: lasts one tick
    ])
    d = decode_tokens(encode_piece(piece, vocab), vocab)
    got = [(n.pitch, n.start, round(n.duration, 6)) for n in d.notes]
    assert got == [(60, 0, 1), (60, 1, 2), (64, 4, 3), (67, 8, round(1 / 12, 6))]


def test_pedal_tempo_timesig_survive(vocab):
    piece = Piece(
        notes=[Note(0, 4, 60, 64, "piano")],
        pedals=[Pedal(0.5, "piano", True), Pedal(3.0, "piano", False)],
        tempos=[Tempo(0, 96), Tempo(2, 150)],
        time_signatures=[TimeSignature(0, 6, 8), TimeSignature(2, 4, 4)],
    )
    d = decode_tokens(encode_piece(piece, vocab), vocab)
    assert [(p.time, p.down) for p in d.pedals] == [(0.5, True), (3.0, False)]
    assert [t.time for t in d.tempos] == [0, 2]
    assert all(abs(a.bpm / b.bpm - 1) < 0.04 for a, b in zip(d.tempos, piece.tempos))
    assert [(t.time, t.numerator, t.denominator) for t in d.time_signatures] == [(0, 6, 8), (2, 4, 4)]


def test_prefix_carries_style_and_instruments():
    vocab = Vocabulary(VocabConfig(styles=("bach", "pop")))
    piece = Piece(notes=[Note(0, 1, 40, 80, "bass"), Note(0, 1, 60, 80, "piano")], style="pop")
    toks = encode_piece(piece, vocab)
    assert vocab.describe(toks[:4]) == ["start", "style:pop", "inst:piano", "inst:bass"]
    assert vocab.names[toks[-1]] == "end"
    dec = StreamDecoder(vocab)
    dec.feed_many(toks)
    assert dec.prefix.style == "pop" and dec.prefix.families == ["piano", "bass"] and dec.ended


@settings(max_examples=60, deadline=None)
@given(pieces(), st.integers(0, 10**6))
def test_streaming_encoder_never_rewrites_the_past(piece, seed):
    """Tokens emitted after k events are a prefix of the tokens after all events, and
    equal to the batch encoding: the bridge can append to a KV cache as notes arrive."""
    vocab = VOCABS["beats12"]
    body, _ = encode_events(piece, vocab)
    enc = StreamEncoder(vocab)
    emitted: list[int] = []
    for ev in piece.events():
        new = enc.add(ev)
        emitted += new
        assert body[: len(emitted)] == emitted
    emitted += enc.finish(end=False)
    assert emitted == body


def test_streaming_decoder_matches_batch_decode(vocab):
    rng = np.random.default_rng(0)
    notes = [Note(float(s), float(d), int(p), int(v), "piano")
             for s, d, p, v in zip(rng.uniform(0, 16, 60), rng.uniform(0.05, 2, 60), rng.integers(40, 90, 60), rng.integers(1, 128, 60))]
    toks = encode_piece(Piece(notes=notes), vocab)
    dec = StreamDecoder(vocab)
    streamed = []
    for t in toks:
        evs = dec.feed(t)
        assert all(e.time == dec.time for e in evs)  # events come out at the decoder's now
        streamed += evs
    streamed += dec.close_all()
    ons = sorted((e.time, e.pitch) for e in streamed if isinstance(e, NoteOn))
    offs = [e for e in streamed if isinstance(e, NoteOff)]
    batch = decode_tokens(toks, vocab)
    assert ons == sorted((n.start, n.pitch) for n in batch.notes)
    assert len(offs) == len(ons)


def test_decoder_keeps_random_tokens_valid(vocab):
    """Garbage token streams (as an untrained model would emit) never hang a note."""
    rng = np.random.default_rng(1)
    notes = np.nonzero(vocab.kind == NOTE)[0]
    waits = np.arange(vocab.wait_base, vocab.wait_base + 12)
    toks = rng.choice(np.concatenate([notes[:300], waits]), 3000)
    dec = StreamDecoder(vocab)
    events = dec.feed_many(toks) + dec.close_all()
    sounding = set()
    for e in events:
        key = (e.family, e.pitch) if isinstance(e, (NoteOn, NoteOff)) else None
        if isinstance(e, NoteOn):
            assert key not in sounding
            sounding.add(key)
        elif isinstance(e, NoteOff):
            assert key in sounding
            sounding.remove(key)
    assert not sounding


def test_live_late_events_never_move_time_back(vocab):
    enc = StreamEncoder(vocab)
    a = enc.add(NoteOn(1.0, "piano", 60, 90))
    b = enc.add(NoteOn(0.5, "piano", 62, 90))  # arrived late: placed now
    assert enc.stats.late == 1 and a[-1] != b[-1] and not any(vocab.kind[t] == 1 for t in b)
    out = enc.finish()
    assert vocab.names[out[-1]] == "end"
    assert sorted(vocab.names[t] for t in out if vocab.kind[t] == NOTE) == ["piano:60:off", "piano:62:off"]
