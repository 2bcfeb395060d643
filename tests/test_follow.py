"""Following the player: what is heard in a phrase, and decoding that keeps to it (a small
random model, so whatever it keeps to, the controls made it keep to)."""

from __future__ import annotations

import numpy as np
import pytest

from musebridge.engine.music.events import Note, NoteOff, NoteOn, Piece
from musebridge.engine.decode.follow import FollowBias, PlayerProfile, follow_nats
from musebridge.engine.music.vocab import NOTE, Vocabulary

C_MAJOR = {0, 2, 4, 5, 7, 9, 11}


def scale_phrase(bars: int = 4) -> Piece:
    """C major up and down in 8ths on piano, a chord at each bar (4 voices)."""
    steps = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [Note(i * 0.5, 0.5, (steps + steps[::-1])[i % 16], 90, "piano") for i in range(bars * 8)]
    notes += [Note(b * 4.0, 1.0, p, 80, "piano") for b in range(bars) for p in (48, 52, 55)]
    return Piece(notes=notes).sorted()


def swung_line() -> Piece:
    return Piece(notes=[Note(b + off, 0.3, 60 + (i % 3) * 2, 90, "reed")
                        for i, b in enumerate(range(16)) for off in (0.0, 2 / 3)]).sorted()


def test_a_c_major_phrase_is_heard_in_c_major_on_a_straight_grid_with_its_voices():
    heard = PlayerProfile.of_piece(scale_phrase()).heard(16.0)
    assert heard.key_pcs == C_MAJOR
    assert heard.grid is not None and heard.grid.name == "16ths"
    assert heard.voices["piano"] == 4  # the melody note over a triad
    assert 1.0 <= heard.hold_limit("piano") <= 4.0
    assert heard.density == pytest.approx(len(scale_phrase().notes) / 16.0)


def test_a_swung_line_is_heard_on_its_own_grid():
    heard = PlayerProfile.of_piece(swung_line()).heard(16.0)
    assert heard.grid.name.startswith("swung 8ths")
    fb = FollowBias(Vocabulary(), heard, 0.0, 0.5, 0.0)
    assert fb.note_on_shift(8) == 0.0  # the swung off-beat: tick 8 of 12
    assert fb.note_on_shift(6) == pytest.approx(-follow_nats(0.5))  # the straight 8th is off this grid


def test_notes_heard_as_played_equal_the_whole_prompt():
    """The jam hears events one at a time; `generate` reads a whole prompt: the same."""
    piece = scale_phrase()
    live = PlayerProfile()
    for ev in piece.events():
        live.observe(ev)
    a, b = live.heard(16.0), PlayerProfile.of_piece(piece).heard(16.0)
    assert (a.key_pcs, a.grid, a.hold, a.voices, a.density) == (b.key_pcs, b.grid, b.hold, b.voices, b.density)
    np.testing.assert_allclose(a.pcp, b.pcp)


def test_only_the_last_bars_count_and_a_held_note_counts_up_to_now():
    prof = PlayerProfile()
    for i in range(16):  # 4 bars of F# major, long ago
        prof.observe(NoteOn(i, "piano", 66 + (0, 2, 4, 5)[i % 4], 90))
        prof.observe(NoteOff(i + 0.9, "piano", 66 + (0, 2, 4, 5)[i % 4]))
    for i, p in enumerate([60, 64, 67, 72] * 4):  # then 4 bars on C major's triad
        prof.observe(NoteOn(100 + i, "piano", p, 90))
        prof.observe(NoteOff(100 + i + 0.9, "piano", p))
    prof.observe(NoteOn(116, "piano", 48, 90))  # still held
    heard = prof.heard(120.0)
    assert {0, 4, 7} <= heard.key_pcs and 6 not in heard.key_pcs
    assert max(n.end for n in prof.recent(120.0)) == pytest.approx(120.0)


def test_follow_strength_goes_from_off_to_strict():
    assert follow_nats(0.0) == 0.0 and follow_nats(0.5) == pytest.approx(2.0)
    assert follow_nats(0.25) < follow_nats(0.5) < follow_nats(0.9) < follow_nats(1.0) == float("inf")


# --- decoding on a random model -------------------------------------------------------------
torch = pytest.importorskip("torch")

from musebridge.bridge.timeline import Timeline  # noqa: E402
from musebridge.engine.decode.generate import generate  # noqa: E402
from musebridge.engine.decode.sampling import LogitShaper, SamplingControls  # noqa: E402
from musebridge.engine.decode.torch_runtime import TorchRuntime  # noqa: E402


@pytest.fixture(scope="module")
def rt():
    from conftest import note_leaning_model

    vocab = Vocabulary()
    return TorchRuntime(note_leaning_model(vocab, context=2048), vocab)


def _ons(rt, tokens):
    v = rt.vocab
    return [t for t in tokens if v.kind[t] == NOTE and v.vbin[t] > 0 and not v.families[v.family[t]].is_drums]


def _out_of_key(rt, controls, steps=1000):
    out = generate(rt, scale_phrase(), bars=64, controls=controls.with_(strengths={"drums": 0.0}), max_tokens=steps)[0]
    assert len(out.tokens) >= steps
    ons = _ons(rt, out.tokens)
    assert len(ons) > 100
    return sum(int(rt.vocab.pitch[t]) % 12 not in C_MAJOR for t in ons) / len(ons)


def test_strict_key_plays_no_note_out_of_key_over_1000_steps_and_soft_fewer(rt):
    free = _out_of_key(rt, SamplingControls(seed=2, follow_key=0.0))
    soft = _out_of_key(rt, SamplingControls(seed=2, follow_key=0.6))
    strict = _out_of_key(rt, SamplingControls(seed=2, follow_key=1.0))
    assert free > 0.2 and soft < free / 2 and strict == 0.0


def test_strict_groove_puts_every_onset_on_the_players_grid(rt):
    def off_grid(controls):
        out = generate(rt, scale_phrase(), bars=8, controls=controls)[0]
        ons = [n.start for n in out.piece.notes]
        assert len(ons) > 50
        return sum(abs(t * 4 - round(t * 4)) > 1e-6 for t in ons) / len(ons)

    assert off_grid(SamplingControls(seed=4, follow_groove=0.0)) > 0.2
    assert off_grid(SamplingControls(seed=4, follow_groove=1.0)) == 0.0


def test_strict_texture_holds_no_note_past_the_players_limit_nor_more_voices(rt):
    heard = PlayerProfile.of_piece(scale_phrase()).heard(16.0)

    def worst(controls):
        out = generate(rt, scale_phrase(), bars=8, controls=controls.with_(strengths={"piano": 1.0}))[0]
        piano = [n for n in out.piece.notes if n.family == "piano"]
        edges = sorted([(n.start, 1) for n in piano] + [(n.end, -1) for n in piano])
        depth = most = 0
        for _, step in edges:
            depth += step
            most = max(most, depth)
        return max(n.duration for n in piano), most

    longest, voices = worst(SamplingControls(seed=6, follow_texture=0.0))
    assert longest > heard.hold_limit("piano") and voices > heard.voice_limit("piano")
    longest, voices = worst(SamplingControls(seed=6, follow_texture=1.0))
    assert longest <= heard.hold_limit("piano") + 1e-9 and voices <= heard.voice_limit("piano")


def _key(ev, shift=0.0):
    return (type(ev).__name__, round(ev.time + shift, 6), ev.family, getattr(ev, "pitch", None), getattr(ev, "velocity", None))


@pytest.mark.parametrize("controls", [SamplingControls(seed=9, follow_key=0.0, follow_groove=0.0, follow_texture=0.0),
                                      SamplingControls(seed=10), SamplingControls(seed=12, follow_key=0.7, follow_groove=0.7,
                                                                                 follow_texture=0.7, min_p=0.02)])
def test_live_and_offline_paths_play_the_same_answer(rt, controls):
    """`generate` (offline) and the jam's Timeline (live) sample through one decode step: same
    prompt, seed and controls, same notes at the same beats."""
    prompt, start, bars = scale_phrase(2), 8.0, 2
    offline = generate(rt, prompt, bars, controls, style="pop", prompt_end=start)[0]
    tl = Timeline(rt, "pop", prompt.families, 4.0)
    tl.add(list(prompt.events()))
    live = tl.generate(start, start + bars * 4.0, LogitShaper(rt.vocab, controls), np.random.default_rng(controls.seed),
                       first_note=False)
    assert len(offline.events) > 10
    assert sorted(_key(e, start) for e in offline.events) == sorted(_key(e) for e in live.events)


def test_what_was_heard_is_kept_until_a_note_is_played_or_leaves_the_window():
    """The jam reads the phrase during its closing silence; the answer then finds it ready,
    and gets a fresh reading when anything changed."""
    prof = PlayerProfile()
    phrase = scale_phrase(2)  # beats 0-8, heard from beat 10 on
    prof.observe_all(NoteOn(ev.time + 8, ev.family, ev.pitch, ev.velocity) if isinstance(ev, NoteOn)
                     else NoteOff(ev.time + 8, ev.family, ev.pitch) for ev in phrase.events())
    first = prof.heard(18.0)
    assert prof.heard(20.0) is first  # nothing new, nothing left the window (it starts at 4)
    later = prof.heard(24.5)  # the first notes (from beat 8) have left it
    assert later is not first and later.density != first.density
    prof.observe(NoteOn(25.0, "piano", 61, 90))
    prof.observe(NoteOff(25.5, "piano", 61))
    assert prof.heard(25.5) is not later


def test_a_part_the_player_did_not_play_joins_on_top_of_their_density():
    """A bass pushed in by its strength is not counted against the piano player's
    density: the piano keeps its own rate, and the bass keeps a rate of its own (the
    player's) -- 4 notes a beat here, over it, so it is held back."""
    from musebridge.engine.decode.row_decoder import RowDecoder
    from musebridge.engine.decode.sampling import Grammar, LogitShaper

    v = Vocabulary()
    heard = PlayerProfile.of_piece(scale_phrase()).heard(16.0)
    shaper = LogitShaper(v, SamplingControls(seed=0, strengths={"bass": 1.0}))
    row = RowDecoder(v, shaper, Grammar(v), np.random.default_rng(0), heard=heard)
    bass = v.family_index["bass"]
    for tick in range(0, 8 * 12, 3):  # 2 beats of bass 16ths and a piano note a beat
        row.feed(v.note(bass, 40 + tick % 12, 5))
        row.feed(v.note(bass, 40 + tick % 12, 0))
        if tick % 12 == 0:
            row.feed(v.note(v.family_index["piano"], 60, 5))
        row.feed(v.wait(3))
    x = np.zeros(len(v))
    row._density(x)
    assert x[v.note(v.family_index["piano"], 60, 5)] > 0  # one piano note a beat is below the player's rate
    assert x[v.note(bass, 40, 5)] < 0  # the bass over its own rate


def band_phrase() -> Piece:
    """4 bars of a band: drums 8ths on kick, snare and closed hat; bass a note a beat; keys
    a chord a bar."""
    notes = []
    for b in range(16):
        notes.append(Note(b, 0.9, 36 + (2 if b % 2 else 0), 90, "bass"))
        for h in (0.0, 0.5):
            notes.append(Note(b + h, 0.1, 42, 80, "drums"))
        notes.append(Note(b, 0.1, 38 if b % 2 else 36, 100, "drums"))
    for bar in range(4):
        for p in (60, 64, 67):
            notes.append(Note(bar * 4.0, 3.9, p, 70, "piano"))
    return Piece(notes=sorted(notes, key=lambda n: n.start))


def test_each_part_of_the_band_keeps_its_own_rate():
    """Drums striking far over their rate are held back while the bass, silent, is pushed
    up: one rate over the whole band let the drums take the bass's share."""
    from musebridge.engine.decode.row_decoder import RowDecoder
    from musebridge.engine.decode.sampling import Grammar, LogitShaper

    v = Vocabulary()
    heard = PlayerProfile.of_piece(band_phrase()).heard(16.0)
    row = RowDecoder(v, LogitShaper(v, SamplingControls(seed=0)), Grammar(v), np.random.default_rng(0), heard=heard)
    drums, bass = v.family_index["drums"], v.family_index["bass"]
    for _ in range(2 * 12):  # 2 beats of a drum hit every tick (24 a beat; the player's 3 a beat), no bass
        row.feed(v.note(drums, 42, 5))
        row.feed(v.note(drums, 42, 0))
        row.feed(v.wait(1))
    x = np.zeros(len(v))
    row._density(x)
    assert x[v.note(drums, 42, 5)] < -1.0
    assert x[v.note(bass, 40, 5)] > 1.0
    assert x[v.note(v.family_index["piano"], 60, 5)] > 0  # (no chord struck in the window either)


def test_drums_keep_to_the_kit_the_player_strikes():
    """Following the groove keeps the drums on the keys the player strikes (kick, snare,
    hat) without changing how likely the drums are to play; a kit joined by its strength
    keeps to the core kit (no toms)."""
    v = Vocabulary()
    drums = v.family_index["drums"]
    on = (v.kind == NOTE) & (v.vbin > 0) & (v.family == drums)
    x = np.full(len(v), -30.0)
    x[on] = 0.0
    p_before = np.exp(x)[on].sum() / np.exp(x).sum()
    heard = PlayerProfile.of_piece(band_phrase()).heard(16.0)
    f = FollowBias(v, heard, key=0.7, groove=0.5, texture=0.5)
    y = f.key(x.copy())
    p = np.exp(y - y.max())
    assert abs(p[on].sum() / p.sum() - p_before) < 1e-6
    kit = on & np.isin(v.pitch, [36, 38, 42])
    assert p[kit].sum() / p[on].sum() > 5 * kit.sum() / on.sum()  # the kit's 3 keys: over 5x their flat share
    tom = v.note(drums, 45, 5)
    assert y[tom] < y[v.note(drums, 42, 5)] - 1.5
    piano_only = PlayerProfile.of_piece(scale_phrase()).heard(16.0)
    g = FollowBias(v, piano_only, key=0.7, groove=0.5, texture=0.5)
    z = g.key(x.copy())
    assert z[tom] < z[v.note(drums, 42, 5)] - 1.5 and z[v.note(drums, 36, 5)] == z[v.note(drums, 42, 5)]


def test_the_key_chooses_which_notes_a_part_plays_not_whether_it_plays():
    """A model unsure of the pitch (every piano note alike): following the key moves the
    piano's out-of-key probability onto its in-key notes, so the piano is as likely to
    play as before (a plain bias would have handed it to the rest) and plays in key."""
    v = Vocabulary()
    heard = PlayerProfile.of_piece(scale_phrase()).heard(16.0)
    on = (v.kind == NOTE) & (v.vbin > 0)
    piano = on & (v.family == v.family_index["piano"])
    x = np.full(len(v), -30.0)
    x[piano] = 0.0
    x[v.wait(6)] = float(np.log(piano.sum()))  # rest and piano equally likely

    def masses(y):
        p = np.exp(y - y.max())
        inside = piano & np.isin(v.pitch % 12, sorted(C_MAJOR))
        return p[piano].sum() / p.sum(), p[inside].sum() / p[piano].sum()

    plays, in_key = masses(x)
    assert abs(plays - 0.5) < 0.01 and in_key < 0.6
    for strength, least in ((0.5, 0.85), (0.7, 0.97), (1.0, 1 - 1e-9)):
        y = FollowBias(v, heard, strength, 0.0, 0.0).key(x.copy())
        plays_now, in_key_now = masses(y)
        assert abs(plays_now - plays) < 1e-6, strength
        assert in_key_now > least, (strength, in_key_now)
    assert np.array_equal(FollowBias(v, heard, 0.0, 0.0, 0.0).key(x.copy()), x)  # off: untouched


def test_a_kit_holds_its_hits_as_briefly_as_hits_sound():
    """Drum hits are one-shots: a kit held for the beat a pitched note may hold filled its
    voices and the drums fell silent. The player's kit, and a kit they do not play, hold
    a hit at most a quarter beat here (their hits last 0.1)."""
    band = PlayerProfile.of_piece(band_phrase()).heard(16.0)
    assert band.hold_limit("drums") <= 0.25 and band.hold_limit("bass") >= 1.0
    piano = PlayerProfile.of_piece(scale_phrase()).heard(16.0)
    assert piano.hold_limit("drums") <= 0.25 < piano.hold_limit("bass")
