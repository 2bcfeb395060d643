"""The continuation benchmark's measures on hand-made music whose answers are known."""

from __future__ import annotations

import pytest

from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.music_metrics import (
    Key, describe, drone_share, estimate_grid, estimate_key, in_scale_share, key_agreement, median_ioi, on_grid_share,
    pitch_range, polyphony, polyphony_by_family,
)

C_MAJOR_SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def line(pitches, step=0.5, family="piano", start=0.0, length=None) -> list[Note]:
    return [Note(start + i * step, length or step, p, 90, family) for i, p in enumerate(pitches)]


def test_c_major_scale_is_c_major_and_agrees_with_itself():
    scale = line(C_MAJOR_SCALE)
    key = estimate_key(scale)
    assert (key.tonic, key.minor) == (0, False)
    assert key_agreement(scale, scale) == pytest.approx(1.0)
    assert in_scale_share(scale, key) == 1.0


def test_a_scale_a_tritone_away_disagrees():
    c, fs = line(C_MAJOR_SCALE), line([p + 6 for p in C_MAJOR_SCALE])
    assert key_agreement(fs, c) < 0.0
    assert in_scale_share(fs, estimate_key(c)) < 0.5


def test_minor_key_and_its_leading_tone():
    a_minor = line([57, 59, 60, 62, 64, 65, 67, 68, 69, 64, 60, 57], step=0.5)
    key = estimate_key(a_minor)
    assert (key.tonic, key.minor) == (9, True)
    assert in_scale_share(a_minor, key) == 1.0  # G# is A minor's leading tone


def test_drums_do_not_count_toward_key():
    notes = line(C_MAJOR_SCALE) + line([37, 39, 42, 46, 49, 51] * 4, step=0.25, family="drums")
    assert estimate_key(notes) == estimate_key(line(C_MAJOR_SCALE))
    assert in_scale_share(notes, Key(0, False, 1.0)) == 1.0


def test_held_whole_note_is_a_drone_only_when_it_crosses_the_bar_rule():
    end = 8.0  # a two-bar clip in 4/4
    within = Note(0.0, 4.0, 60, 90, "piano")  # bar 1 only: released before the end
    last_bar = Note(4.0, 4.0, 60, 90, "piano")  # struck a bar before the end: not "over a bar"
    crossing = Note(2.0, 6.0, 60, 90, "piano")  # struck 1.5 bars before the end, cut by it
    assert drone_share([within], end) == 0.0
    assert drone_share([last_bar], end) == 0.0
    assert drone_share([crossing], end) == 1.0
    assert drone_share([within, last_bar, crossing, crossing], end) == 0.5


def test_swung_eighths_are_on_their_own_grid():
    swing = [Note(b + ph, 0.3, 60 + i % 5, 90, "piano") for i, (b, ph) in
             enumerate((b, ph) for b in range(8) for ph in (0.0, 0.62))]
    grid = estimate_grid(swing)
    assert "swung" in grid.name
    assert on_grid_share(swing, grid) == 1.0
    straight = line([60] * 16, step=0.5)
    assert on_grid_share(straight, grid) == 0.5  # straight off-beats miss the swing grid


def test_triplets_and_straight_grids():
    trip = line([60, 62, 64] * 4, step=1 / 3)
    grid = estimate_grid(trip)
    assert grid.name == "triplets" and on_grid_share(trip, grid) == 1.0
    sixteenths = line([60] * 16, step=0.25)
    assert estimate_grid(sixteenths).name == "16ths"
    assert on_grid_share(trip, estimate_grid(sixteenths)) == pytest.approx(4 / 12)
    loose = [Note(i * 0.5 + 0.17, 0.25, 60, 90, "piano") for i in range(8)]
    assert on_grid_share(loose, estimate_grid(sixteenths)) == 0.0


def test_polyphony_density_range_ioi():
    triads = [Note(b, 1.0, p, 90, "piano") for b in range(4) for p in (60, 64, 67)]
    assert polyphony(triads) == pytest.approx(3.0)
    melody = line([72, 74, 76, 77], step=1.0, family="synth_lead")
    assert polyphony(melody) == pytest.approx(1.0)
    assert polyphony_by_family(triads + melody) == {"piano": pytest.approx(3.0), "synth_lead": pytest.approx(1.0)}
    assert pitch_range(triads + melody) == 17
    assert median_ioi(triads) == 1.0


def test_describe_a_continuation_that_repeats_the_prompt():
    prompt = Piece(notes=line(C_MAJOR_SCALE, step=0.5))
    d = describe(line(C_MAJOR_SCALE, step=0.5), 4.0, prompt, estimate_key(prompt.notes), estimate_grid(prompt.notes))
    assert d["key_agreement"] == pytest.approx(1.0)
    assert (d["in_scale"], d["on_grid"], d["length_ratio"], d["drones"]) == (1.0, 1.0, 1.0, 0.0)
    assert d["density"] == 2.0


def test_pitched_density_sees_a_band_that_goes_on_with_the_drums_alone():
    band = [Note(b * 0.5, 0.25, 36 + 6 * (b % 2), 90, "drums") for b in range(32)]
    band += [Note(float(b), 0.9, 40 + (b % 3), 80, "bass") for b in range(16)]
    prompt = Piece(notes=band)
    key, grid = estimate_key(band), estimate_grid(band)
    real = describe(band, 16.0, prompt, key, grid)
    drums_alone = describe([n for n in band if n.family == "drums"] * 2, 16.0, prompt, key, grid)
    assert real["pitched_density"] == 1.0 and real["density"] == 3.0
    assert drums_alone["density"] > 2.5 and drums_alone["pitched_density"] == 0.0
