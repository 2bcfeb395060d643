"""Note safety: every note we start is released, garbage never gets in, echoes are recognised."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from musebridge.bridge.safety import RESET_SYSEX, DropCounters, EchoGuard, MidiParser, NoteTracker, note_key


def sent(tracker: NoteTracker, msg: bytes) -> None:
    """What the scheduler does with a note message it sends: on -> note_on, off (or velocity 0) -> note_off."""
    ch, pitch, on = note_key(msg)
    if on:
        tracker.note_on(ch, pitch)
    else:
        tracker.note_off(ch, pitch)


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
        sent(tracker, m)
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
    sent(tr, bytes([0x90, 60, 0]))
    assert len(tr) == 0
    assert tr.note_off(0, 60) is None  # a stray off is harmless


def test_end_releases_the_very_note_its_id_names():
    tr = NoteTracker()
    tr.note_on(0, 60, t=1.0, note_id=10)
    tr.note_on(0, 60, t=2.0, note_id=11)
    assert tr.end(11).start == 2.0 and [n.note_id for n in tr.sounding()] == [10]
    assert tr.end(11) is None  # ended already
    assert tr.note_off(0, 60).note_id == 10 and tr.end(10) is None and not tr


def test_expired_lists_notes_held_too_long_without_releasing_them():
    tr = NoteTracker()
    tr.note_on(1, 40, t=0.0)
    tr.note_on(2, 50, t=5.0)
    assert tr.expired(now=8.5, max_len_s=8.0) == [(1, 40)]
    assert len(tr) == 2
    assert sorted(tr.expired(now=20.0, max_len_s=8.0)) == [(1, 40), (2, 50)]


def parse(chunks, counters: DropCounters | None = None) -> list[bytes]:
    p = MidiParser(counters)
    return [m for chunk in chunks for m in p.feed(chunk)]


GOOD = [b"\x90\x3c\x64", b"\x80\x3c\x00", b"\xb0\x40\x7f", b"\xc5\x10", b"\xd0\x20", b"\xe0\x00\x40",
        b"\xf8", b"\xfa", b"\xfb", b"\xfc", b"\xf2\x10\x00", b"\xf1\x01", b"\xf3\x02", b"\xf6", b"\xfe", b"\xff"]


def test_parser_passes_every_well_formed_message_alone_or_glued():
    c = DropCounters()
    assert parse(GOOD, c) == GOOD
    assert parse([b"".join(GOOD)], c) == GOOD  # one driver event holding them all
    assert parse([list(m) for m in GOOD], c) == GOOD  # rtmidi hands over lists of ints
    assert c.total == 0 and c.bytes == 0


def test_parser_follows_running_status_realtime_inside_messages_and_split_events():
    assert parse([b"\x90\x3c\x64\x3e\x64\x3c\x00"]) == [b"\x90\x3c\x64", b"\x90\x3e\x64", b"\x90\x3c\x00"]
    assert parse([b"\xc0\x05\x06"]) == [b"\xc0\x05", b"\xc0\x06"]
    assert parse([b"\x90\xf8\x3c\xfa\x64"]) == [b"\xf8", b"\xfa", b"\x90\x3c\x64"]  # real-time first, at once
    assert parse([b"\x90\x3c", b"\x64"]) == [b"\x90\x3c\x64"]  # one message over two events
    assert parse([b"\x90", b"\x3c", b"\xf8", b"\x64\x40"], c := DropCounters()) == [b"\xf8", b"\x90\x3c\x64"]
    assert c.total == 0  # 0x40 waits for its partner (running status), nothing lost yet
    # system common cancels running status; real-time does not
    assert parse([b"\x90\x3c\x64\xf8\x3e\x64"]) == [b"\x90\x3c\x64", b"\xf8", b"\x90\x3e\x64"]
    assert parse([b"\x90\x3c\x64\xf6\x3e\x64"], c := DropCounters()) == [b"\x90\x3c\x64", b"\xf6"]
    assert c.no_status == 2


def test_parser_drops_and_counts_garbage_byte_by_byte():
    cases = {  # garbage, then a note: the note is heard, the garbage counted
        b"\xf0\x7e\x00\xf7": ("sysex", 4),
        b"\xf0\x01": ("sysex", 2),  # torn: the note's status byte ends it
        b"\x3c\x64": ("no_status", 2),
        b"\x90\x3c": ("length", 2),
        b"\xc0": ("length", 1),
        b"\xf2\x10": ("length", 2),
        b"\xf4": ("undefined", 1),
        b"\xf5": ("undefined", 1),
        b"\xf9": ("undefined", 1),
        b"\xfd": ("undefined", 1),
        b"\xf7": ("undefined", 1),
    }
    for garbage, (reason, nbytes) in cases.items():
        c = DropCounters()
        assert parse([garbage, b"\x91\x40\x50"], c) == [b"\x91\x40\x50"], garbage
        assert getattr(c, reason) == (nbytes if reason == "no_status" else 1) and c.bytes == nbytes, (garbage, c)
    c = DropCounters()
    assert parse([[0x90, 300, None, 0x3C, 0x64]], c) == [b"\x90\x3c\x64"]  # not bytes: skipped, no raise
    assert c.undefined == 2 and c.bytes == 2


def test_torn_sysex_glued_to_what_followed_costs_only_itself():
    """F10: what RtMidi's JACK input hands over after `F0 01` with no F7 -- every later event
    glued onto it until one ends in F7 (here our own reset marker). Each message in it is heard."""
    glued = bytes.fromhex("f0 01 90 3c 64 b0 07 64 f8 fa 80 3c 00") + RESET_SYSEX
    p = MidiParser()
    assert p.feed(glued) == [b"\x90\x3c\x64", b"\xb0\x07\x64", b"\xf8", b"\xfa", b"\x80\x3c\x00"]
    assert p.counters.as_dict() == {**DropCounters().as_dict(), "sysex": 1, "bytes": 2}
    assert p.resets == 1 and p.pending == 0
    assert p.feed(RESET_SYSEX) == [] and p.counters.total == 1  # the marker alone is expected, not garbage


# garbage of the kinds flaky drivers and devices produce
_status = st.integers(0x80, 0xEF)
_data = st.integers(0, 0x7F)
_realtime = st.sampled_from([0xF8, 0xFA, 0xFB, 0xFC, 0xFE, 0xFF, 0xF9, 0xFD])
_piece = st.one_of(
    st.binary(max_size=12),  # anything
    st.lists(_data, min_size=1, max_size=8).map(lambda d: [0xF0, *d]),  # torn sysex
    st.lists(_data, min_size=1, max_size=6),  # stray data bytes (running status with no status)
    st.tuples(_status, st.lists(_data, max_size=7)).map(lambda x: [x[0], *x[1]]),  # running status, truncated
    st.tuples(st.sampled_from([0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7]), st.lists(_data, max_size=3)).map(
        lambda x: [x[0], *x[1]]),
)
garbage_streams = st.tuples(st.lists(_piece, max_size=30), st.lists(st.tuples(st.integers(0, 10_000), _realtime),
                                                                       max_size=10)).map(
    lambda x: _sprinkle(bytes(b for piece in x[0] for b in piece), x[1]))


def _sprinkle(stream: bytes, realtime: list[tuple[int, int]]) -> bytes:
    out = bytearray(stream)
    for pos, b in realtime:  # real-time bytes anywhere, even inside other messages
        out.insert(pos % (len(out) + 1), b)
    return bytes(out)


def _well_formed(m: bytes) -> bool:
    s = m[0]
    if s >= 0xF8:
        return len(m) == 1 and s not in (0xF9, 0xFD)
    want = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1}.get(s) if s >= 0xF0 else (2 if s & 0xF0 in (0xC0, 0xD0) else 3)
    return s >= 0x80 and len(m) == want and all(b < 0x80 for b in m[1:])


@settings(max_examples=1500, deadline=None)
@given(garbage_streams, st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_after_any_garbage_the_next_note_is_heard_and_every_byte_is_accounted_for(stream, cuts):
    note = b"\x9a\x3c\x64"
    data = stream + note
    c = DropCounters()
    p = MidiParser(c)
    got, i, n = [], 0, 0
    while i < len(data):  # in driver events of random sizes
        got += p.feed(data[i:i + cuts[n % len(cuts)]])
        i += cuts[n % len(cuts)]
        n += 1
    assert got and got[-1] == note
    assert all(_well_formed(m) for m in got), got
    passed = sum(len(m) for m in got)
    assert passed - p.implied + c.bytes + p.pending + len(RESET_SYSEX) * p.resets == len(data)


def test_echo_guard_excuses_each_sent_note_once_within_the_window():
    g = EchoGuard(window_s=0.05)
    g.sent(bytes([0x91, 60, 100]), t=10.0)
    g.sent(bytes([0x81, 60, 0]), t=10.01)
    assert not g.is_echo(bytes([0x91, 61, 100]), t=10.02)  # another key
    assert not g.is_echo(bytes([0x92, 60, 100]), t=10.02)  # another channel
    assert g.is_echo(bytes([0x91, 60, 100]), t=10.02)  # ours, as sent
    assert not g.is_echo(bytes([0x91, 60, 100]), t=10.03)  # used up
    assert g.is_echo(bytes([0x91, 60, 0]), t=10.03)  # a velocity-0 note-on is the off coming back
    g.sent(bytes([0x91, 62, 100]), t=10.1)
    assert g.is_echo(bytes([0x91, 62, 90]), t=10.11)  # a proven loop may change velocity on the way
    g.sent(bytes([0x91, 64, 100]), t=11.0)
    assert not g.is_echo(bytes([0x91, 64, 100]), t=11.06)  # too late: the player's own note
    assert not g.is_echo(bytes([0xF8]), t=11.0)


def test_echo_guard_never_takes_a_doubled_player_note_before_a_loop_is_proven():
    """Accompany mode doubles the player's line: the model's note and the player's, same
    key within 50 ms at the start of a jam, when the guard still assumes a loop. The
    player's note (its own velocity) and its release are heard (before: swallowed, and
    one of 12 input notes went missing in CI)."""
    g = EchoGuard(window_s=0.05)
    g.sent(bytes([0x90, 60, 103]), t=1.0)  # the model's note (a velocity bin's value)
    assert not g.is_echo(bytes([0x90, 60, 100]), t=1.01)  # the player's, velocity 100: heard
    g.sent(bytes([0x80, 60, 0]), t=1.2)
    assert not g.is_echo(bytes([0x80, 60, 0]), t=1.21)  # its release: heard, never an echo
    g.sent(bytes([0x90, 62, 103]), t=2.0)
    assert g.is_echo(bytes([0x90, 62, 103]), t=2.005)  # the model's own, exactly as sent: an echo


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
