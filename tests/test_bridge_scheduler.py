"""The scheduler without ports (messages go to a list): what it sends for re-strikes, cancels,
panic, late notes and the max-note-length guard, and that it tracks sounding notes by the
same ids it schedules them with."""

from __future__ import annotations

import time

from musebridge.bridge.scheduler import Scheduled, Scheduler

from conftest import wait_until


def scheduler(spb: float = 0.05, lead_s: float = 0.05, **kw) -> tuple[Scheduler, list[bytes]]:
    """Beat 0 is `lead_s` from now, a beat lasts `spb` seconds; sent messages land in the list."""
    sent: list[bytes] = []
    t0 = time.perf_counter() + lead_s
    sc = Scheduler(sent.append, lambda beat: t0 + beat * spb, late_s=kw.pop("late_s", 1.0), **kw)
    sc.start()
    return sc, sent


def test_a_restruck_key_is_released_first_and_its_old_note_off_sends_nothing():
    sc, sent = scheduler()
    try:
        sc.note(0.0, 2.0, 0, 60, 90)
        sc.note(1.0, 3.0, 0, 60, 80)
        assert wait_until(lambda: sc.pending() == 0, 3.0)
        assert wait_until(lambda: len(sent) >= 4, 3.0)
        time.sleep(0.05)
    finally:
        sc.stop()
    assert sent[:4] == [bytes([0x90, 60, 90]), bytes([0x80, 60, 0]), bytes([0x90, 60, 80]), bytes([0x80, 60, 0])]
    assert len(sc.tracker) == 0


def test_cancel_releases_the_answers_sounding_notes_and_drops_the_rest():
    sc, sent = scheduler()
    try:
        sc.note(0.0, 100.0, 1, 64, 90, tag=7)
        sc.note(200.0, 300.0, 1, 67, 90, tag=7)
        sc.note(0.0, 100.0, 2, 40, 90, tag=8)
        assert wait_until(lambda: len(sc.tracker) == 2, 3.0)
        assert sc.cancel(tag=7) == 1  # the note not started yet
        assert bytes([0x81, 64, 0]) in sent and [(n.channel, n.pitch) for n in sc.tracker.sounding()] == [(2, 40)]
        assert sc.pending() == 1  # the other answer's note-off
    finally:
        sc.stop()


class Roll:
    """A `RollWriter` into a list: [channel, pitch, velocity, on, off] per note sent."""

    def __init__(self):
        self.notes: list[list] = []

    def opened(self, channel, pitch, velocity, t):
        self.notes.append([channel, pitch, velocity, t, None])
        return self.notes[-1]

    def closed(self, note, t):
        note[4] = t


def test_a_note_held_past_the_limit_is_released_by_the_guard_and_its_roll_note_ends():
    roll = Roll()
    sc, sent = scheduler(max_note_s=0.1, roll=roll)
    try:
        sc.note(0.0, 40.0, 3, 50, 90)  # its own note-off comes after 2 s
        assert wait_until(lambda: bytes([0x83, 50, 0]) in sent, 3.0)
        assert len(sc.tracker) == 0 and [(c, p, off is not None) for c, p, _, _, off in roll.notes] == [(3, 50, True)]
    finally:
        sc.stop()


def test_one_owner_knows_a_note_by_one_id_scheduled_sent_released_and_the_roll_reads_it():
    roll = Roll()
    sc, sent = scheduler(roll=roll)
    try:
        nid = sc.new_note_id()
        sc.tracker.schedule(("piano", 60), nid)
        sc.push(Scheduled(0.0, 0, "on", 0, 60, 90, nid))
        assert wait_until(lambda: len(sc.tracker) == 1, 3.0)
        [note] = sc.tracker.sounding()
        assert note.note_id == nid and note.roll is roll.notes[0] and roll.notes[0][:3] == [0, 60, 90]
        assert roll.notes[0][4] is None  # sounding in the roll too
        assert sc.tracker.scheduled(("piano", 60)) == nid and sc.tracker.scheduled(("piano", 60)) is None
        sc.push(Scheduled(1.0, 0, "off", 0, 60, 0, nid))
        assert wait_until(lambda: len(sc.tracker) == 0, 3.0)
        assert sent == [bytes([0x90, 60, 90]), bytes([0x80, 60, 0])] and roll.notes[0][4] is not None
    finally:
        sc.stop()


def test_panic_ends_every_sounding_note_in_the_roll_and_cancel_only_the_answers():
    roll = Roll()
    sc, sent = scheduler(roll=roll)
    try:
        sc.note(0.0, 100.0, 0, 60, 90, tag=1)
        sc.note(0.0, 100.0, 1, 64, 90, tag=2)
        sc.note(0.0, 100.0, 2, 67, 90, tag=2)
        assert wait_until(lambda: len(sc.tracker) == 3, 3.0)
        sc.cancel(tag=1)
        assert [(n[1], n[4] is None) for n in roll.notes] == [(60, False), (64, True), (67, True)]
        sc.panic()
        assert len(sc.tracker) == 0 and all(n[4] is not None for n in roll.notes)
    finally:
        sc.stop()


def test_panic_releases_every_note_then_sustain_and_all_notes_off():
    sc, sent = scheduler()
    try:
        sc.note(0.0, 100.0, 0, 60, 90)
        sc.note(0.0, 100.0, 5, 70, 90)
        assert wait_until(lambda: len(sc.tracker) == 2, 3.0)
        sc.panic()
        assert sc.pending() == 0 and len(sc.tracker) == 0
    finally:
        sc.stop()
    tail = sent[2:]
    assert sorted(tail[:2]) == [bytes([0x80, 60, 0]), bytes([0x85, 70, 0])]
    assert set(tail[2:6]) == {bytes([0xB0, 64, 0]), bytes([0xB0, 123, 0]), bytes([0xB5, 64, 0]), bytes([0xB5, 123, 0])}


def test_a_late_note_is_dropped_with_its_note_off_never_bunched():
    sc, sent = scheduler(lead_s=-1.0, late_s=0.03)  # beat 0 was a second ago
    try:
        sc.note(0.0, 1.0, 0, 60, 90)
        assert wait_until(lambda: sc.pending() == 0, 3.0)
    finally:
        sc.stop()
    assert sc.dropped_late == 1 and not [m for m in sent if m[0] & 0xF0 in (0x80, 0x90)]


def test_model_output_notes_reach_the_roll_through_the_tracker_and_panic_ends_them_there():
    from musebridge.bridge.jam_record import JamRecord
    from musebridge.bridge.model_output import ModelOutput
    from musebridge.engine.music.events import NoteOff, NoteOn

    record, sent = JamRecord(), []
    out = ModelOutput(record)
    t0 = time.perf_counter() + 0.05
    out.start(sent.append, lambda beat: t0 + beat * 0.05, lambda t: (t - t0) / 0.05, late_s=1.0, max_note_s=8.0,
              latency_s=0.0)
    try:
        on = out.push(NoteOn(0.0, "bass", 36, 90), tag=1)
        assert out.push(NoteOff(0.5, "piano", 60), tag=1) is None  # nothing of it scheduled: nothing to release
        out.push(NoteOn(0.0, "piano", 60, 80), tag=1)
        assert wait_until(lambda: len(out.scheduler.tracker) == 2, 3.0)
        assert out.push(NoteOff(100.0, "bass", 36), tag=1) == on  # the note-off names the note-on's id
        assert sorted((n.family, n.pitch, n.off) for n in record.roll_snapshot()) == [("bass", 36, None),
                                                                                      ("piano", 60, None)]
        out.silence()
        assert len(out.scheduler.tracker) == 0 and all(n.off is not None for n in record.roll_snapshot())
    finally:
        out.stop()


def test_the_watched_answer_gets_its_note_ons_written_as_they_go_out_and_no_one_elses():
    from musebridge.bridge.jam_record import LiveAnswer

    sc, sent = scheduler()
    a = LiveAnswer(5, 0.0, 4.0, time.perf_counter(), {})
    sc.tracker.watch(a)
    try:
        mine = sc.note(0.0, 1.0, 0, 60, 90, tag=5)
        sc.note(0.5, 1.0, 1, 62, 90, tag=6)
        assert wait_until(lambda: len(sent) >= 4, 3.0)
        assert a.sent == {mine} and a.first is not None and abs(a.first[1] - a.first[0]) < 0.5
        sc.tracker.watch(None)
        sc.note(1.5, 2.0, 0, 64, 90, tag=5)
        assert wait_until(lambda: len(sent) >= 6, 3.0) and a.sent == {mine}
    finally:
        sc.stop()


def test_a_message_handed_over_late_is_counted_apart_not_as_send_jitter():
    """A note-off the generator hands over after it was due is sent at once; its lateness is
    the generator's (`arrived_late`), not the scheduler's send jitter."""
    sc, sent = scheduler()
    try:
        sc.note(-10.0, -9.0, 0, 60, 90)  # due 0.45 and 0.4 s ago (late_s here is 1 s: both are sent)
        assert wait_until(lambda: len(sent) >= 1, 3.0)
        sc.note(0.5, 0.6, 0, 62, 90)  # on time
        assert wait_until(lambda: len(sent) >= 3, 3.0)
        time.sleep(0.05)
    finally:
        sc.stop()
    st = sc.jitter_stats()
    assert st["arrived_late"] == 2 and st["sent"] == 4
    assert st["max_ms"] < 50.0, st  # counted from their due time, 400+ ms
