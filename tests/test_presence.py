"""The presence floor: a family turned up that the player does not play joins in."""

from __future__ import annotations

import numpy as np

from musebridge.engine.decode.follow import FollowBias, PlayerProfile
from musebridge.engine.decode.presence import PRESENCE_SHARE, PresenceFloor
from musebridge.engine.decode.row_decoder import RowDecoder
from musebridge.engine.decode.sampling import NEG, Grammar, LogitShaper, SamplingControls
from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.vocab import NOTE, Vocabulary

V = Vocabulary()
ON = (V.kind == NOTE) & (V.vbin > 0)
BASS, PIANO = V.family_index["bass"], V.family_index["piano"]


def ranges() -> list[tuple[int, int]]:
    out = []
    for fi in range(len(V.families)):
        ids = np.nonzero((V.family == fi) & (V.kind == NOTE))[0]
        out.append((int(ids.min()), int(ids.max()) + 1))
    return out


def logits_without_bass() -> np.ndarray:
    """What a model gives after four bars of piano: piano likely, bass 20 nats down."""
    x = np.full(len(V), -5.0)
    x[V.wait(3)] = 2.0
    lo, hi = ranges()[PIANO]
    x[lo:hi][ON[lo:hi]] = 0.0
    lo, hi = ranges()[BASS]
    x[lo:hi][ON[lo:hi]] = -20.0
    return x


def share(x: np.ndarray, family: int) -> float:
    p = np.exp(x - x.max())
    lo, hi = ranges()[family]
    return float(p[lo:hi][ON[lo:hi]].sum() / p[ON].sum())


PHRASE = Piece(notes=[Note(float(b), 0.9, 60 + 2 * (b % 4), 80, "piano") for b in range(8)])  # a beat each


def floor(strengths: dict[str, float]) -> PresenceFloor:
    """The floor of an answer to PHRASE (the player plays piano, notes of 0.9 beats)."""
    heard = PlayerProfile.of_piece(PHRASE).heard(8.0)
    return PresenceFloor(V, strengths, FollowBias(V, heard, 0.5, 0.5, 0.5))


def test_a_silent_favoured_part_gets_its_share_of_the_onsets_and_no_more():
    x = logits_without_bass()
    assert share(x, BASS) < 1e-6
    before = np.exp(x - x.max())
    out = floor({"bass": 1.0}).apply(x.copy(), 0, {})
    assert abs(share(out, BASS) - PRESENCE_SHARE) < 1e-6
    lo, hi = ranges()[BASS]
    assert np.allclose(out[:lo], x[:lo]) and np.allclose(out[hi:], x[hi:])  # only the bass moved
    p = np.exp(out - out.max())
    assert p[V.wait(3)] / p[ON].sum() > 0.5 * before[V.wait(3)] / before[ON].sum()  # rests stay likely
    assert abs(share(floor({"bass": 0.75}).apply(x.copy(), 0, {}), BASS) - PRESENCE_SHARE * 0.5) < 1e-6
    # a part already likely enough is left as it is
    x2 = x.copy()
    x2[lo:hi][ON[lo:hi]] = 3.0
    assert np.array_equal(floor({"bass": 1.0}).apply(x2.copy(), 0, {}), x2)


def test_no_floor_for_neutral_strengths_played_families_or_masked_parts():
    x = logits_without_bass()
    assert not floor({"bass": 0.5}) and not floor({"bass": 0.2})
    assert not floor({"piano": 1.0})  # the player plays it: the model carries it
    assert np.array_equal(floor({"bass": 0.5}).apply(x.copy(), 0, {}), x)
    masked = x.copy()
    lo, hi = ranges()[BASS]
    masked[lo:hi] = NEG  # e.g. the key rule or the grammar shut every bass note
    assert np.array_equal(floor({"bass": 1.0}).apply(masked.copy(), 0, {}), masked)


def test_a_part_that_plays_is_left_to_the_model_until_its_note_outlasts_the_players():
    x = logits_without_bass()
    f = floor({"bass": 1.0})
    limit = f.hold_ticks
    assert abs(limit - 21.6) < 1e-9  # the player's notes last 0.9 beats: their hold limit is twice that
    out = f.apply(x.copy(), 12, {(BASS, 40): 0})  # it holds a note: no lift, no rest past its limit
    assert np.array_equal(out[V.kind == NOTE], x[V.kind == NOTE])
    assert out[V.wait(9)] == x[V.wait(9)] and out[V.wait(10)] < -1e8
    out = f.apply(x.copy(), 21, {(BASS, 40): 0, (PIANO, 60): 0})  # due: only its note-off may follow
    assert np.nonzero(out > -1e8)[0].tolist() == [V.note(BASS, 40, 0)]
    f.struck(BASS, 10)
    assert np.array_equal(f.apply(x.copy(), 12, {}), x)  # it struck a sixth of a beat ago
    assert share(f.apply(x.copy(), 24, {}), BASS) > 0.49  # a beat later it rests: lifted again


def test_row_decoder_brings_the_bass_in_under_a_piano_phrase():
    """Through the one decode path: a model that never offers bass after piano (and would hold
    a bass note for ever) still gets a bass line at strength 1, no note longer than the player's limit;
    at 0.5 none."""
    heard = PlayerProfile.of_piece(PHRASE).heard(8.0)
    x = logits_without_bass()
    x[V.wait(3)] = 8.0  # time passes: a note-on at one step in five
    x[(V.kind == NOTE) & (V.vbin == 0)] = 7.0  # a sounding note ends soon (the grammar opens its note-off)
    lo, hi = ranges()[BASS]
    x[lo:hi][~ON[lo:hi]] = -30.0  # ... but a bass note, never

    def bass_notes(strength: float) -> int:
        shaper = LogitShaper(V, SamplingControls(seed=0, strengths={"bass": strength}, follow_texture=0.0))
        row = RowDecoder(V, shaper, Grammar(V), np.random.default_rng(0), heard=heard)
        n = 0
        for _ in range(400):
            tok = row.sample(x)
            row.feed(tok)
            n += bool(ON[tok] and V.family[tok] == BASS)
            assert all(row.tick - onset <= 22 for (fi, _), onset in row.held.items() if fi == BASS)
        return n

    assert bass_notes(0.5) == 0
    assert bass_notes(1.0) >= 10


def test_a_part_brought_in_keeps_to_the_players_grid():
    """The player's grid (16ths here: ticks 0, 3, 6, 9 of 12): the part's note-ons are shut
    off it, whatever the model would play there; with the groove not followed, they are not."""
    x = logits_without_bass()
    f = floor({"drums": 1.0})
    drums = V.family_index["drums"]
    lo, hi = ranges()[drums]
    for tick in (1, 5, 7, 13):
        assert (f.apply(x.copy(), tick, {})[lo:hi][ON[lo:hi]] < -1e8).all()
        assert (f.apply(x.copy(), 12, {}, beat_tick=tick)[lo:hi][ON[lo:hi]] < -1e8).all()  # read on the beat's clock
    for tick in (3, 6, 12):
        assert share(f.apply(x.copy(), tick, {}), drums) > 0.49  # on the grid it is lifted
    piano_lo, piano_hi = ranges()[PIANO]
    assert np.array_equal(f.apply(x.copy(), 5, {})[piano_lo:piano_hi], x[piano_lo:piano_hi])  # the player's own: free
    heard = PlayerProfile.of_piece(PHRASE).heard(8.0)
    loose = PresenceFloor(V, {"drums": 1.0}, FollowBias(V, heard, 0.5, 0.0, 0.5))
    assert share(loose.apply(x.copy(), 5, {}), drums) > 0.49


BAND = Piece(notes=[Note(float(b), 0.5, 36 + (b % 2) * 7, 90, "drums") for b in range(16)]
             + [Note(b + 0.5, 0.4, 42, 70, "drums") for b in range(16)]
             + [Note(float(b), 0.9, 40 if b % 4 < 2 else 43, 80, "bass") for b in range(0, 16, 2)])


def band_floor(strengths=None) -> tuple[PresenceFloor, FollowBias]:
    """An answer to a 4-bar drums-and-bass phrase (drums 32 onsets, bass 8)."""
    heard = PlayerProfile.of_piece(BAND).heard(16.0)
    follow = FollowBias(V, heard, 0.5, 0.5, 0.5)
    return PresenceFloor(V, strengths or {}, follow), follow


def test_a_part_of_the_players_band_is_kept_at_its_rate():
    """The model drops the bass after drums and bass: while the bass strikes less often than
    the player's did, it gets its share of their onsets (8 of 40); at their rate, nothing."""
    x = logits_without_bass()
    f, _ = band_floor()
    assert abs(f.share[BASS] - 0.2) < 1e-9
    assert abs(share(f.apply(x.copy(), 0, {}), BASS) - 0.2) < 1e-6
    for t in range(0, 48, 24):  # a bass note every 2 beats, as the player played it
        f.struck(BASS, t)
    lo, hi = ranges()[BASS]
    assert np.array_equal(f.apply(x.copy(), 47, {})[lo:hi], x[lo:hi])
    assert share(f.apply(x.copy(), 72, {}), BASS) > 0.19  # two beats later it is behind again
    held = {(BASS, 40): 60}  # holding as many notes as their bass did at once: no more lifted
    assert share(f.apply(x.copy(), 72, held), BASS) < 1e-6


def test_a_lifted_part_ends_its_notes_by_its_own_hold_limit():
    x = logits_without_bass()
    f, follow = band_floor()
    limit = follow.hold_ticks[BASS]  # twice the player's 0.9-beat bass notes
    assert abs(limit - 21.6) < 1e-9
    out = f.apply(x.copy(), 60 + 21, {(BASS, 40): 60})
    assert np.nonzero(out > -1e8)[0].tolist() == [V.note(BASS, 40, 0)]


def test_a_family_neither_played_nor_asked_for_pays_the_texture_nats():
    f, follow = band_floor({"strings": 1.0})
    lo, hi = ranges()[V.family_index["organ"]]
    assert (f.bias[lo:hi][ON[lo:hi]] == -follow.texture_nats).all() and follow.texture_nats == 2.0
    for fam in ("drums", "bass", "strings"):  # played, or asked for
        lo, hi = ranges()[V.family_index[fam]]
        assert not f.bias[lo:hi].any()
    assert not (f.bias[~ON]).any()  # note-offs and everything else: free
    heard = PlayerProfile.of_piece(BAND).heard(16.0)
    assert not PresenceFloor(V, {}, FollowBias(V, heard, 0.5, 0.5, 0.0)).bias.any()  # texture not followed


def test_a_joined_part_strikes_no_more_notes_at_once_than_the_part_sounds():
    x = logits_without_bass()
    f = floor({"drums": 1.0})
    drums = V.family_index["drums"]
    lo, hi = ranges()[drums]
    for k in range(f.voices[drums]):
        assert not (f.apply(x.copy(), 12, {})[lo:hi][ON[lo:hi]] < -1e8).all(), k
        f.struck(drums, 12)
    assert f.voices[drums] == 3
    assert (f.apply(x.copy(), 12, {})[lo:hi][ON[lo:hi]] < -1e8).all()  # a kit's three at this instant
    assert not (f.apply(x.copy(), 15, {})[lo:hi][ON[lo:hi]] < -1e8).all()  # the next instant: free again


def test_a_bass_turned_up_under_a_piano_keeps_to_a_bass_register():
    """A joined bass followed the piano up to the bass family's top (MIDI 67): its notes
    above G3 now cost the texture's nats, and the bass keeps its probability of playing."""
    heard = PlayerProfile.of_piece(PHRASE).heard(8.0)
    follow = FollowBias(V, heard, key=0.0, groove=0.0, texture=0.5)
    follow.prefer(PresenceFloor(V, {"bass": 1.0}, follow).off_register(), follow.texture_nats)
    mine = ON & (V.family == BASS)
    x = np.where(mine, 0.0, -30.0)
    x[V.wait(3)] = 0.0
    y = follow.key(x.copy())
    assert y[V.note(BASS, 64, 5)] < y[V.note(BASS, 40, 5)] - 1.5
    p0, p1 = np.exp(x), np.exp(y)
    assert abs(p1[mine].sum() / p1.sum() - p0[mine].sum() / p0.sum()) < 1e-9
    # and the row decoder applies it to a bass joined under the piano
    row = RowDecoder(V, LogitShaper(V, SamplingControls(seed=0, strengths={"bass": 1.0})), Grammar(V),
                     np.random.default_rng(0), heard=heard)
    assert row.follow.static[V.note(BASS, 64, 5)] < row.follow.static[V.note(BASS, 40, 5)]
