"""The player's MIDI bytes as the jam hears them, without ports: channels and their families,
program changes, held keys and all-notes-off, the pedal, quantize, the trigger note and CC,
mapped CCs, the input channel and our own echoes."""

from __future__ import annotations

import pytest

from musebridge.bridge.cc_map import CCMap
from musebridge.bridge.config import JamConfig
from musebridge.bridge.input_decoder import Control, InputDecoder, Played, Trigger
from musebridge.bridge.safety import EchoGuard
from musebridge.engine.music.events import NoteOff, NoteOn, Pedal


def decoder(tmp_path=None, **cfg) -> InputDecoder:
    ccmap = CCMap(tmp_path / "m.json", load=False) if tmp_path is not None else None
    return InputDecoder(JamConfig(**cfg).validate(), lambda t: 2.0 * t, ccmap)  # 120 BPM from time 0


def events(items) -> list:
    assert all(isinstance(i, Played) for i in items), items
    return [i.event for i in items]


def test_notes_come_out_in_timeline_beats_with_the_input_family():
    d = decoder(in_family="strings")
    assert events(d.decode(bytes([0x90, 60, 100]), 1.0)) == [NoteOn(2.0, "strings", 60, 100)]
    assert events(d.decode(bytes([0x90, 60, 0]), 1.25)) == [NoteOff(2.5, "strings", 60)]  # velocity 0 is a release
    assert events(d.decode(bytes([0x80, 62, 64]), 1.5)) == [NoteOff(3.0, "strings", 62)]
    assert d.notes_in == 1 and d.held == {}


def test_channel_ten_is_drums_and_a_program_change_sets_a_channels_family():
    d = decoder()
    assert events(d.decode(bytes([0x99, 36, 90]), 0.0)) == [NoteOn(0.0, "drums", 36, 90)]
    assert d.decode(bytes([0xC2, 33]), 0.0) == []  # GM 34: fingered bass
    assert events(d.decode(bytes([0x92, 40, 80]), 0.5)) == [NoteOn(1.0, "bass", 40, 80)]
    assert events(d.decode(bytes([0x90, 60, 80]), 0.5)) == [NoteOn(1.0, "piano", 60, 80)]  # channel 1 unchanged


def test_held_keys_are_released_by_all_notes_off_on_their_channel_only():
    d = decoder()
    for msg in ([0x90, 60, 90], [0x90, 64, 90], [0x91, 67, 90]):
        d.decode(bytes(msg), 0.0)
    assert set(d.held) == {(0, 60), (0, 64), (1, 67)}
    out = d.decode(bytes([0xB0, 123, 0]), 1.0)
    assert all(p.assumed for p in out)
    assert sorted(e.pitch for e in events(out)) == [60, 64] and all(isinstance(e, NoteOff) and e.time == 2.0
                                                                     for e in events(out))
    assert set(d.held) == {(1, 67)}


def test_a_key_held_past_the_limit_is_let_go_and_others_stay():
    d = decoder()
    d.decode(bytes([0x90, 60, 90]), 0.0)  # beat 0
    d.decode(bytes([0x90, 72, 90]), 4.0)  # beat 8
    assert events(d.release_held(10.0, older_than=4.0)) == [NoteOff(10.0, "piano", 60)]
    assert list(d.held) == [(0, 72)]


def test_the_pedal_is_an_event_and_quantize_pulls_times_to_the_grid():
    d = decoder(quantize=1.0, grid=0.5)
    assert events(d.decode(bytes([0xB0, 64, 127]), 0.6)) == [Pedal(1.0, "piano", True)]  # beat 1.2 -> 1.0
    assert events(d.decode(bytes([0x90, 60, 80]), 0.7)) == [NoteOn(1.5, "piano", 60, 80)]  # 1.4 -> 1.5
    half = decoder(quantize=0.5, grid=1.0)
    assert events(half.decode(bytes([0x90, 60, 80]), 0.1)) == [NoteOn(0.1, "piano", 60, 80)]  # 0.2 halfway to 0


def test_the_trigger_note_and_cc_trigger_and_are_not_played():
    d = decoder(trigger_note=36, trigger_cc=80)
    assert d.decode(bytes([0x90, 36, 100]), 3.0) == [Trigger(3.0)]
    assert d.decode(bytes([0xB0, 80, 127]), 4.0) == [Trigger(4.0)]
    assert d.decode(bytes([0xB0, 80, 10]), 4.5) == []  # a CC trigger fires at 64 and up
    assert d.notes_in == 0 and d.held == {}


def test_mapped_ccs_become_controls(tmp_path):
    d = decoder(tmp_path)
    cc = d.ccmap.cc_for("follow_groove")
    assert d.decode(bytes([0xB5, cc, 127]), 0.0) == [Control("follow_groove", 1.0)]  # any channel
    assert d.decode(bytes([0xB0, 3, 1]), 0.0) == []  # unmapped: nothing


def test_messages_the_jam_has_no_use_for_are_counted():
    d = decoder()
    for msg in ([0xA0, 60, 10], [0xE0, 0, 64], [0xD0, 5], [0xF3, 1]):
        assert d.decode(bytes(msg), 0.0) == []
    assert d.ignored == 4


@pytest.mark.parametrize("status, admitted", [(0x90, False), (0x92, True)])
def test_only_the_input_channel_is_admitted(status, admitted):
    d = decoder(in_channel=3)
    assert d.admit(bytes([status, 60, 90])) is admitted


def test_our_own_note_coming_back_is_not_admitted_but_the_players_double_is():
    d = decoder()
    d.echo = EchoGuard(window_s=10.0)
    d.echo.sent(bytes([0x90, 60, 100]))
    assert not d.admit(bytes([0x90, 60, 100])) and d.echoes == 1  # ours, back through a loopback
    assert d.admit(bytes([0x90, 60, 100]))  # each note we sent excuses one arrival
