"""Following MIDI clock (tempo, phase, transport, dropouts) and the internal clock."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from musebridge.bridge.clock import PPQN, ClockFollower, InternalClock

CLOCK, START, CONTINUE, STOP, SPP = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
T0 = 1000.0


class FakeNow:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ticks(cf: ClockFollower, now: FakeNow, bpm: float, n: int, t0: float, jitter_s: float = 0.0,
          rng: np.random.Generator | None = None, k0: int = 0) -> float:
    """Feed n ticks of an ideal clock (tick k at t0 + k*period) with uniform jitter; returns
    the ideal time of the tick after the last."""
    period = 60.0 / bpm / PPQN
    for k in range(k0, k0 + n):
        t = t0 + k * period + (rng.uniform(-jitter_s, jitter_s) if rng is not None else 0.0)
        now.t = t
        cf.feed(CLOCK, b"", t)
    return t0 + (k0 + n) * period


@pytest.mark.parametrize("seed", range(8))
def test_jittered_120_bpm_tempo_within_half_a_bpm_and_next_bar_within_1_ms(seed):
    rng = np.random.default_rng(seed)
    now = FakeNow()
    cf = ClockFollower(beats_per_bar=4, now=now)
    cf.feed(START, b"", T0 - 0.002)
    n = int(rng.integers(2 * 96, 4 * 96))  # 2 to 4 bars in, anywhere in a bar
    ticks(cf, now, 120.0, n, T0, jitter_s=0.001, rng=rng)
    assert cf.bpm == pytest.approx(120.0, abs=0.5)
    t = T0 + (n - 1) * 0.5 / PPQN + rng.uniform(0, 0.5 / PPQN)  # between two ticks
    now.t = t
    assert cf.running and cf.source == "midi clock"
    beat = cf.beat_at(t)
    assert beat == pytest.approx((t - T0) / 0.5, abs=0.005)  # extrapolated between ticks
    bar = cf.next_bar(beat)
    assert bar % 4 == 0 and bar > beat
    assert abs(cf.time_at(bar) - (T0 + bar * 0.5)) < 0.001


def test_start_plays_from_zero_on_the_first_tick_then_advances_one_tick_per_clock():
    now = FakeNow()
    cf = ClockFollower(now=now)
    ticks(cf, now, 100.0, 48, T0 - 2.0)  # clock before Start (DAWs that always send it): tempo, no motion
    assert not cf.running and cf.beat_at(now.t) == 0.0 and cf.bpm == pytest.approx(100.0, abs=1e-6)
    cf.feed(START, b"", now.t + 0.001)
    assert cf.running and cf.beat_at(now.t + 0.3) == 0.0  # held until the first clock
    first = cf.time_at(0.0)
    assert first == pytest.approx(T0 - 2.0 + 48 * 0.6 / PPQN, abs=1e-6)  # predicted first tick
    assert cf.time_at(1.0) == pytest.approx(first + 0.6, abs=1e-6)
    ticks(cf, now, 100.0, 25, T0 - 2.0, k0=48)
    assert cf.beat_at(now.t) == pytest.approx(1.0)
    assert cf.next_beat(1.0) == 2.0 and cf.next_bar(1.0) == 4.0 and cf.next_bar(4.0) == 8.0


def test_stop_holds_the_position_and_spp_then_continue_resumes_there():
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    end = ticks(cf, now, 120.0, 49, T0)  # beats 0 .. 2
    now.t = end - 0.005
    cf.feed(STOP, b"", now.t)
    assert not cf.running and not cf.playing and cf.source == "internal"
    held = cf.beat_at(now.t)
    assert held == pytest.approx(2.0 + 1 / PPQN * 0.76, abs=0.01)
    assert cf.beat_at(now.t + 5) == held and math.isinf(cf.time_at(held + 1))
    cf.feed(SPP, bytes([16 & 0x7F, 16 >> 7]), now.t + 1)  # 16 sixteenths = beat 4
    assert cf.beat_at(now.t + 1) == 4.0
    big = 8 * 128 + 3  # a position needing both data bytes
    cf.feed(SPP, bytes([big & 0x7F, big >> 7]), now.t + 1)
    assert cf.beat_at(now.t + 1) == big / 4
    cf.feed(SPP, bytes([16, 0]), now.t + 1)
    t1 = now.t + 2.0
    cf.feed(CONTINUE, b"", t1)
    assert cf.running
    ticks(cf, now, 120.0, 1, t1 + 0.001)
    assert cf.beat_at(now.t) == pytest.approx(4.0)
    ticks(cf, now, 120.0, 24, t1 + 0.001, k0=1)
    assert cf.beat_at(now.t) == pytest.approx(5.0)
    assert cf.bpm == pytest.approx(120.0, abs=0.01)  # the pause did not spoil the tempo


def test_continue_without_spp_resumes_at_the_next_tick():
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    ticks(cf, now, 120.0, 30, T0)  # played ticks 0..29
    cf.feed(STOP, b"", now.t + 0.001)
    cf.feed(CONTINUE, b"", now.t + 3.0)
    ticks(cf, now, 120.0, 1, now.t + 3.001)
    assert cf.beat_at(now.t) == pytest.approx(30 / PPQN)


def test_clock_dropout_falls_back_then_relocks_where_the_extrapolation_got_to():
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    ticks(cf, now, 120.0, 96, T0)  # 4 beats
    last = now.t
    now.t = last + 0.4
    assert cf.running
    now.t = last + 0.6  # > 0.5 s without a tick, no Stop: fall back
    assert not cf.running and cf.source == "internal" and cf.playing
    assert cf.beat_at(now.t) == pytest.approx((now.t - T0) / 0.5, abs=1e-3)  # keeps moving at the last tempo
    assert cf.time_at(12.0) == pytest.approx(T0 + 6.0, abs=1e-3)
    ticks(cf, now, 120.0, 24, T0, k0=8 * 24)  # the clock is back at beat 8
    assert cf.running and cf.source == "midi clock"
    assert cf.beat_at(now.t) == pytest.approx(9.0 - 1 / PPQN, abs=1e-3)


def test_tempo_change_is_followed_within_a_beat():
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    rng = np.random.default_rng(1)
    nxt = ticks(cf, now, 120.0, 200, T0, jitter_s=0.001, rng=rng)
    ticks(cf, now, 140.0, 24, nxt, jitter_s=0.001, rng=rng)
    assert cf.tempo_resets >= 1
    assert cf.bpm == pytest.approx(140.0, abs=0.5)


def test_a_stall_then_a_burst_of_late_ticks_moves_neither_tempo_nor_phase():
    """A busy sender holds 8 ticks back and then sends them at once: they count for the
    position but must not be read as a tempo change."""
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    rng = np.random.default_rng(2)
    period = 0.5 / PPQN
    for k in range(240):
        t = T0 + k * period + rng.uniform(-0.001, 0.001)
        if 150 <= k < 158:
            t = T0 + 158 * period - 0.0002 * (158 - k)
        now.t = t
        cf.feed(CLOCK, b"", t)
    assert cf.tempo_resets == 0
    assert cf.bpm == pytest.approx(120.0, abs=0.1)
    assert cf.beat_at(now.t) == pytest.approx(239 / PPQN, abs=0.01)
    assert abs(cf.time_at(12.0) - (T0 + 6.0)) < 0.001


def test_non_clock_messages_and_short_spp_are_ignored():
    cf = ClockFollower(now=FakeNow())
    cf.feed(0x90, b"\x3c\x64", T0)
    cf.feed(SPP, b"\x01", T0)
    cf.feed_message(b"", T0)
    assert cf.beat_at(T0) == 0.0 and not cf.running


def test_internal_clock_start_stop_resume_locate_and_tempo_change():
    now = FakeNow()
    ic = InternalClock(120, now=now)
    assert not ic.running and ic.source == "internal"
    ic.start(T0)
    assert ic.beat_at(T0 + 1.0) == pytest.approx(2.0)
    assert ic.time_at(ic.next_bar(2.0)) == pytest.approx(T0 + 2.0)
    ic.set_bpm(60, T0 + 1.0)  # from beat 2 on, one beat per second
    assert ic.beat_at(T0 + 3.0) == pytest.approx(4.0) and ic.bpm == 60
    ic.stop(T0 + 3.0)
    assert ic.beat_at(T0 + 10) == pytest.approx(4.0) and math.isinf(ic.time_at(5.0))
    ic.resume(T0 + 10)
    assert ic.beat_at(T0 + 11) == pytest.approx(5.0)
    ic.locate(16.0, T0 + 11)
    assert ic.time_at(17.0) == pytest.approx(T0 + 12.0)
    with pytest.raises(ValueError):
        ic.set_bpm(0)


def test_time_signature_sets_bar_lines():
    ic = InternalClock(120)
    ic.set_time_signature(6, 8)
    assert ic.beats_per_bar == 3.0
    assert ic.next_bar(0.0) == 3.0 and ic.next_bar(2.99) == 3.0 and ic.next_bar(3.0) == 6.0
    assert ic.bar_of(5.9) == 1
    cf = ClockFollower(beats_per_bar=3)
    assert cf.next_bar(4.5) == 6.0 and cf.next_beat(4.5) == 5.0 and cf.next_beat(5.0) == 6.0
    with pytest.raises(ValueError):
        ic.set_time_signature(4, 3)


def test_clock_and_transport_over_real_jack_ports(jack_server):
    """A sender thread plays Start + 120 BPM clock through JACK; the follower locks to it."""
    from musebridge.bridge.midi_input import MidiInput
    from musebridge.bridge.ports import MidiOutput

    cf = ClockFollower()
    with MidiOutput(api="jack") as out, \
            MidiInput("MuseBridge:MuseBridge Out", api="jack", callback=lambda m, t: cf.feed(m[0], m[1:], t)) as inp:
        time.sleep(0.05)
        period = 0.5 / PPQN
        sent: list[float] = []

        def play() -> None:
            t0 = time.perf_counter() + 0.01
            out.send(b"\xfa")
            for k in range(72):  # 3 beats
                due = t0 + k * period
                while (d := due - time.perf_counter()) > 0:
                    time.sleep(min(d, 0.002))
                out.send(b"\xf8")
                sent.append(time.perf_counter())

        th = threading.Thread(target=play)
        th.start()
        th.join()
        time.sleep(0.05)
        assert cf.ticks_received == 72 and inp.callback_errors == 0
        assert cf.bpm == pytest.approx(120.0, abs=1.0)
        # the follower's beat 3 vs when the sender meant it (arrival adds ~1-3 ms through JACK)
        err = cf.time_at(3.0) - (sent[0] + 72 * period)
        assert -0.002 < err < 0.008
        out.send(b"\xfc")
        time.sleep(0.05)
        assert not cf.playing


def test_ticks_held_up_longer_than_the_timeout_then_burst_are_still_counted():
    """A loaded machine held the DAW's ticks back for 0.8 s, then delivered them at once:
    they are the real ticks, so the position must not jump ahead (no re-lock on top)."""
    now = FakeNow()
    cf = ClockFollower(now=now)
    cf.feed(START, b"", T0 - 0.001)
    period = 60.0 / 120.0 / PPQN
    ticks(cf, now, 120.0, 96, T0)  # 4 beats on time
    stall_end = T0 + 96 * period + 0.8
    for i, k in enumerate(range(96, 96 + 38)):  # the ticks due during the stall, in a burst
        now.t = stall_end + i * 0.0002
        cf.feed(CLOCK, b"", now.t)
    ticks(cf, now, 120.0, 48, T0, k0=96 + 38)  # then on time again
    assert cf.beat_at(now.t) == pytest.approx((96 + 38 + 47) / PPQN, abs=0.02)
    assert cf.bpm == pytest.approx(120.0, abs=1.0)


def test_start_or_continue_locks_only_once_a_clock_follows():
    """The song follows MIDI clock from a quarter beat of ticks after Start/Continue on;
    a transport message no clock follows (a stray button, garbage) locks nothing."""
    from musebridge.bridge.clock import LOCK_TICKS

    now = FakeNow()
    cf = ClockFollower(now=now)
    ticks(cf, now, 120.0, 3, T0)  # a few stray ticks while stopped
    cf.feed(START, b"", now.t + 0.01)
    cf.feed(CONTINUE, b"", now.t + 0.02)
    now.t += 0.05
    assert not cf.heard_within(2.0)
    t = ticks(cf, now, 120.0, LOCK_TICKS - 1, now.t)
    assert not cf.heard_within(2.0)
    ticks(cf, now, 120.0, 1, t)
    assert cf.heard_within(2.0)
    now.t += 2.5  # the clock stalls past the flywheel
    assert not cf.heard_within(2.0)
