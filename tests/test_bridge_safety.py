"""Note safety: every note we start is released, garbage never gets in, echoes are recognised."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from musebridge.bridge.safety import DropCounters, EchoGuard, NoteTracker, sanitize


class CountingSynth:
    """A synth that stacks voices: each note-on adds one, each note-off ends one,
    CC123/CC120 end a channel's voices. The strictest receiver for release_all."""

    def __init__(self) -> None:
        self.voices: Counter = Counter()

    def play(self, msg: bytes) -> None:
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == 0x90 and msg[2] > 0:
            self.voices[(ch, msg[1])] += 1
        elif kind in (0x80, 0x90) and self.voices[(ch, msg[1])] > 0:
            self.voices[(ch, msg[1])] -= 1
        elif kind == 0xB0 and msg[1] in (120, 123):
            for k in [k for k in self.voices if k[0] == ch]:
                self.voices[k] = 0

    def sounding(self) -> int:
        return sum(self.voices.values())


note_msgs = st.tuples(st.integers(0, 15), st.integers(0, 127), st.sampled_from(["on", "off", "on0"]),
                      st.integers(1, 127)).map(
    lambda x: bytes([0x90 | x[0], x[1], x[3]]) if x[2] == "on"
    else bytes([0x80 | x[0], x[1], 64]) if x[2] == "off" else bytes([0x90 | x[0], x[1], 0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(note_msgs, max_size=200))
def test_release_all_after_random_notes_leaves_nothing_sounding(msgs):
    tracker, synth = NoteTracker(), CountingSynth()
    for m in msgs:
        tracker.observe(m)
        synth.play(m)
    release = tracker.release_all()
    assert tracker.sounding() == [] and len(tracker) == 0
    # individual note-offs alone must silence the stacking synth (CC123 is only a backstop)
    for m in release:
        if m[0] & 0xF0 == 0x80:
            synth.play(m)
    assert synth.sounding() == 0
    # note-offs come first, then CC64=0 and CC123=0 on every channel a note was played on
    kinds = [m[0] & 0xF0 for m in release]
    assert kinds == sorted(kinds)
    ccs = {(m[0] & 0x0F, m[1], m[2]) for m in release if m[0] & 0xF0 == 0xB0}
    used = {m[0] & 0x0F for m in msgs if m[0] & 0xF0 == 0x90 and m[2] > 0}
    assert {(ch, 64, 0) for ch in used} | {(ch, 123, 0) for ch in used} <= ccs
    assert tracker.release_all() == [b for b in release if b[0] & 0xF0 == 0xB0]  # nothing left but the CCs


def test_note_off_ends_the_oldest_voice_and_velocity_zero_is_an_off():
    tr = NoteTracker()
    a = tr.note_on(0, 60, t=1.0)
    b = tr.note_on(0, 60, t=2.0)
    assert a != b and len(tr) == 2
    assert tr.note_off(0, 60).note_id == a
    tr.observe(bytes([0x90, 60, 0]))
    assert len(tr) == 0
    assert tr.note_off(0, 60) is None  # a stray off is harmless


def test_expired_lists_notes_held_too_long_without_releasing_them():
    tr = NoteTracker()
    tr.note_on(1, 40, t=0.0)
    tr.note_on(2, 50, t=5.0)
    assert tr.expired(now=8.5, max_len_s=8.0) == [(1, 40)]
    assert len(tr) == 2
    assert sorted(tr.expired(now=20.0, max_len_s=8.0)) == [(1, 40), (2, 50)]


def test_all_notes_off_sent_clears_the_channel():
    tr = NoteTracker()
    tr.note_on(3, 60)
    tr.note_on(4, 60)
    tr.observe(bytes([0xB3, 123, 0]))
    assert [(n.channel, n.pitch) for n in tr.sounding()] == [(4, 60)]


def test_sanitize_passes_every_well_formed_message():
    good = [b"\x90\x3c\x64", b"\x80\x3c\x00", b"\xb0\x40\x7f", b"\xc5\x10", b"\xd0\x20", b"\xe0\x00\x40",
            b"\xf8", b"\xfa", b"\xfb", b"\xfc", b"\xf2\x10\x00", b"\xf1\x01", b"\xf3\x02", b"\xf6", b"\xfe", b"\xff"]
    c = DropCounters()
    for m in good:
        assert sanitize(m, c) == m
        assert sanitize(list(m), c) == m
    assert c.total == 0


def test_sanitize_drops_and_counts_garbage():
    c = DropCounters()
    bad = {
        b"": "empty",
        b"\xf0\x7e\x00\xf7": "sysex",
        b"\x3c\x64": "no_status",  # running status: data bytes without their status
        b"\x90\x3c": "length",
        b"\x90\x3c\x64\x00": "length",
        b"\xc0\x01\x02": "length",
        b"\x90\x80\x64": "data_byte",
        b"\xb0\x40\xff": "data_byte",
        b"\xf4": "undefined",
        b"\xf9": "undefined",
        b"\xf7": "undefined",
    }
    for m, reason in bad.items():
        before = getattr(c, reason)
        assert sanitize(m, c) is None, m
        assert getattr(c, reason) == before + 1, (m, reason)
    assert c.total == len(bad)
    assert sanitize([0x90, 300, 1]) is None and sanitize([None]) is None  # odd values: dropped, no raise


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 5), min_size=1, max_size=50))
def test_sanitize_never_raises_on_a_torn_byte_stream(stream, cuts):
    c = DropCounters()
    i = n = 0
    while i < len(stream):
        size = cuts[n % len(cuts)]
        out = sanitize(stream[i:i + size], c)
        if out is not None:  # whatever passes is one complete message
            assert out[0] >= 0x80 and out[0] != 0xF0 and all(b < 0x80 for b in out[1:])
        i += size
        n += 1
    assert c.total <= n


def test_echo_guard_excuses_each_sent_note_once_within_the_window():
    g = EchoGuard(window_s=0.05)
    g.sent(bytes([0x91, 60, 100]), t=10.0)
    g.sent(bytes([0x81, 60, 0]), t=10.01)
    assert not g.is_echo(bytes([0x91, 61, 100]), t=10.02)  # another key
    assert not g.is_echo(bytes([0x92, 60, 100]), t=10.02)  # another channel
    assert g.is_echo(bytes([0x91, 60, 90]), t=10.02)  # velocity may differ on the way back
    assert not g.is_echo(bytes([0x91, 60, 90]), t=10.03)  # used up
    assert g.is_echo(bytes([0x91, 60, 0]), t=10.03)  # a velocity-0 note-on is the off coming back
    g.sent(bytes([0x91, 64, 100]), t=11.0)
    assert not g.is_echo(bytes([0x91, 64, 100]), t=11.06)  # too late: the player's own note
    assert not g.is_echo(bytes([0xF8]), t=11.0)


def test_echo_guard_stands_down_without_a_loop_and_holds_with_one():
    quiet = EchoGuard(window_s=0.05)  # nothing routes our output back to our input
    for i in range(8):
        quiet.sent(bytes([0x90, 50 + i, 100]), t=1.0 + 0.1 * i)  # none of these come back
    quiet.sent(bytes([0x90, 60, 100]), t=2.0)
    assert not quiet.is_echo(bytes([0x90, 60, 100]), t=2.01)  # the player doubling the model: heard
    looped = EchoGuard(window_s=0.05)  # an IAC bus / DAW track sends everything back
    for i in range(40):
        looped.sent(bytes([0x90, 50 + i % 20, 100]), t=1.0 + 0.1 * i)
        assert looped.is_echo(bytes([0x90, 50 + i % 20, 100]), t=1.003 + 0.1 * i)
