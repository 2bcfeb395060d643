"""MIDI ports on a real (private, headless) JACK server: virtual and by-name ports, many
notes, clock passing through, one-line errors, `musebridge ports`, a peer that vanishes
and returns, and a peer nobody here wrote (jack_midi_dump)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import rtmidi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from click.testing import CliRunner

from conftest import wait_until
from musebridge.bridge import midi_input as input_mod
from musebridge.bridge import midi_system as system_mod
from musebridge.bridge import ports as ports_mod
from musebridge.bridge.midi_input import MidiInput
from musebridge.bridge.midi_system import resolve_api
from musebridge.bridge.ports import MidiOutput, find_port, list_ports
from musebridge.errors import MuseBridgeError
from musebridge.cli.main import cli, main


def wait_for(cond, timeout: float = 3.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def drain(inp: MidiInput, n: int, timeout: float = 5.0) -> list[tuple[bytes, float]]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = inp.receive(timeout=0.1)
        if m is not None:
            got.append(m)
    time.sleep(0.05)
    got += list(inp.iter_pending())  # anything extra (duplicates) shows up too
    return got


# --- arrival times from the driver's stamps (no server needed) ---------------------------------------


def _arrivals(true_times, poll_delays, driver_rate=1.0, deltas=True):
    from musebridge.bridge.midi_input import ArrivalClock

    clock, out, prev = ArrivalClock(), [], None
    for t, d in zip(true_times, poll_delays):
        delta = 0.0 if prev is None or not deltas else (t - prev) * driver_rate
        prev = t
        out.append(clock.stamp(delta, t + d))
    return np.array(out)


def test_arrival_times_see_through_a_late_polling_thread():
    rng = np.random.default_rng(0)
    true = np.cumsum(rng.uniform(0.01, 0.05, 500)) + 100.0  # a message every 10-50 ms
    delay = rng.exponential(0.002, 500) + (rng.random(500) < 0.05) * rng.uniform(0.005, 0.015, 500)
    got = _arrivals(true, delay)
    err = got[20:] - true[20:]
    assert np.abs(err).max() < 0.002 and np.median(np.abs(err)) < 0.5 * np.median(delay)  # better than the poll
    assert (got <= true + delay + 1e-12).all()  # never later than the poll


def test_arrival_times_follow_a_drifting_driver_clock_and_survive_missing_deltas():
    rng = np.random.default_rng(1)
    true = np.cumsum(rng.uniform(0.01, 0.03, 3000))  # a minute of messages
    delay = rng.exponential(0.001, 3000)
    for rate in (0.9995, 1.0005):  # the driver's clock 500 ppm slow or fast
        err = _arrivals(true, delay, driver_rate=rate) - true
        assert np.abs(err).max() < 0.004
    poll = true + delay  # a driver that gives no deltas: the poll time, within MAX_AGE
    got = _arrivals(true, delay, deltas=False)
    assert (got <= poll + 1e-12).all() and (poll - got).max() <= 0.02 + 1e-9


# --- choosing the API (no server needed) -----------------------------------------------------------


def test_unknown_api_names_the_choices(monkeypatch):
    with pytest.raises(MuseBridgeError, match=r"MIDI API 'midi2' is unknown: use one of auto, alsa, jack, coremidi, windows"):
        resolve_api("midi2")
    monkeypatch.setenv("MUSEBRIDGE_MIDI_API", "bogus")
    with pytest.raises(MuseBridgeError, match=r"MUSEBRIDGE_MIDI_API='bogus' is not a MIDI API"):
        resolve_api("auto")
    monkeypatch.setenv("MUSEBRIDGE_MIDI_API", "JACK")
    assert resolve_api("auto") == rtmidi.API_UNIX_JACK
    assert resolve_api("alsa") == rtmidi.API_LINUX_ALSA  # explicit wins over the variable


def test_auto_prefers_alsa_when_the_sequencer_exists(monkeypatch, tmp_path):
    monkeypatch.delenv("MUSEBRIDGE_MIDI_API", raising=False)
    monkeypatch.setattr(system_mod.sys, "platform", "linux")
    seq = tmp_path / "seq"
    seq.touch()
    monkeypatch.setattr(system_mod, "ALSA_SEQ", str(seq))
    monkeypatch.setattr(system_mod, "jack_running", lambda: True)
    assert resolve_api("auto") == rtmidi.API_LINUX_ALSA
    seq.unlink()
    assert resolve_api("auto") == rtmidi.API_UNIX_JACK
    monkeypatch.setattr(system_mod, "jack_running", lambda: False)
    assert resolve_api("auto") == rtmidi.API_LINUX_ALSA  # nothing answers: ALSA, whose error says what to do


def test_windows_has_no_virtual_ports_and_says_to_use_loopmidi(monkeypatch):
    monkeypatch.setattr(ports_mod, "resolve_api", lambda api: rtmidi.API_WINDOWS_MM)
    with pytest.raises(MuseBridgeError, match="virtual MIDI ports do not exist on Windows: install loopMIDI"):
        MidiOutput()


def test_find_port_exact_then_unique_substring():
    names = ["fs:midi_00", "Keystation 49:port", "Keystation 61:port"]
    assert find_port(names, "fs:midi_00", "output") == 0
    assert find_port(names, "FS:MIDI", "output") == 0
    assert find_port(names, "keystation 61", "input") == 2
    with pytest.raises(MuseBridgeError, match="ambiguous: it matches Keystation 49:port, Keystation 61:port"):
        find_port(names, "keystation", "input")


def test_no_jack_server_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "mb_no_such_server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    with pytest.raises(MuseBridgeError) as e:
        MidiOutput(api="jack")
    assert str(e.value).startswith("no JACK server 'mb_no_such_server' is running: start one")
    assert "\n" not in str(e.value)


def test_ports_without_alsa_sequencer_print_one_error_line(capsys):
    if not system_mod.sys.platform.startswith("linux") or system_mod.os.path.exists(system_mod.ALSA_SEQ):
        pytest.skip("needs a Linux machine without the ALSA sequencer")
    assert main(["ports", "--api", "alsa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot open the ALSA sequencer") and "\n" not in err


# --- real ports -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loopback(jack_server):
    """Our virtual output, and an input connected to it by name -- opened once per module:
    JACK clients are slow to come and go on a loaded machine, so tests share them."""
    with MidiOutput() as out, MidiInput("musebridge out") as inp:  # auto -> JACK; case-insensitive substring
        yield out, inp


@pytest.fixture
def loop(loopback):
    out, inp = loopback
    list(inp.iter_pending())
    inp.callback = None
    yield out, inp
    inp.callback = None


def test_virtual_output_reaches_an_input_connected_by_name(loop):
    out, inp = loop
    assert out.virtual and out.name == "MuseBridge Out" and out.connected()
    assert not inp.virtual and inp.name == "MuseBridge:MuseBridge Out" and inp.connected()
    t_send = time.perf_counter()
    out.send(bytes([0x93, 60, 100]))
    out.send([0x83, 60, 0])
    got = drain(inp, 2)
    assert [m for m, _ in got] == [b"\x93\x3c\x64", b"\x83\x3c\x00"]
    assert t_send <= got[0][1] <= got[1][1] <= time.perf_counter()
    assert got[0][1] - t_send < 0.1


def test_two_thousand_notes_arrive_complete_and_in_order(loop):
    out, inp = loop
    sent, n0 = [], out.sent
    for k in range(2000):
        msg = bytes([0x90 | (k % 16), k % 128, 1 + (k // 128) % 127])
        out.send(msg)
        sent.append(msg)
        time.sleep(0.0003)  # small spacing: a fast run, not one burst into rtmidi's ring buffer
    got = drain(inp, 2000, timeout=10)
    assert len(got) == 2000 and [m for m, _ in got] == sent
    times = [t for _, t in got]
    assert times == sorted(times)
    assert inp.dropped.total == 0 and out.sent - n0 == 2000


def test_clock_and_transport_come_through_sysex_and_active_sensing_do_not(loop):
    out, inp = loop
    for msg in ([0xF2, 0x10, 0x00], [0xFA], [0xF8], [0xFE], [0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7], [0xFB],
                [0xFC], [0x90, 64, 1]):
        out.send(msg)
    got = [m for m, _ in drain(inp, 6)]
    assert got == [b"\xf2\x10\x00", b"\xfa", b"\xf8", b"\xfb", b"\xfc", b"\x90\x40\x01"]


@pytest.fixture(scope="module")
def raw_sender(jack_server):
    """An input of ours, and a bare rtmidi JACK output connected to it: sends any bytes,
    as a flaky device or driver would (MidiOutput sends only what it is given too, but
    this keeps our own output code out of what is tested)."""
    with MidiInput("raw in", virtual=True, client_name="rawtest") as inp:
        out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="raw sender")
        ports = out.get_ports()
        out.open_port(ports.index("rawtest:raw in"))
        time.sleep(system_mod.JACK_SETTLE_S)
        try:
            yield out, inp
        finally:
            out.close_port()
            out.delete()


def test_a_torn_sysex_does_not_make_the_input_deaf(raw_sender):
    """F10: `F0 01` with no F7, then a note, CC, clock and Start: RtMidi's JACK input holds
    them all glued to the sysex until an event ends in F7. Every one must still arrive."""
    out, inp = raw_sender
    list(inp.iter_pending())
    before = inp.dropped.sysex
    out.send_message([0xF0, 0x01])
    follow = [[0x90, 60, 100], [0xB0, 7, 99], [0xF8], [0xFA], [0x80, 60, 0]]
    for m in follow:
        time.sleep(0.002)
        out.send_message(m)
    got = [m for m, _ in drain(inp, len(follow), timeout=3)]
    assert got == [bytes(m) for m in follow]
    assert inp.dropped.sysex == before + 1  # the torn sysex itself: counted, not passed


garbage_pieces = st.one_of(
    st.binary(min_size=1, max_size=6),
    st.lists(st.integers(0, 0x7F), min_size=1, max_size=5).map(lambda d: bytes([0xF0, *d])),  # torn sysex
    st.lists(st.integers(0, 0x7F), min_size=1, max_size=4).map(bytes),  # stray data bytes
    st.tuples(st.integers(0x80, 0xEF), st.binary(max_size=1)).map(lambda x: bytes([x[0]]) + bytes(b & 0x7F for b in x[1])),
    st.sampled_from([b"\xf8", b"\xfe", b"\xf9", b"\xfd", b"\xf4", b"\xf7", b"\xf2\x01"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(garbage_pieces, min_size=1, max_size=8))
def test_after_garbage_over_jack_the_next_note_is_always_heard(raw_sender, pieces):
    out, inp = raw_sender
    list(inp.iter_pending())
    for piece in pieces:  # each piece one JACK event; rtmidi refuses some (e.g. empty) itself
        try:
            out.send_message(list(piece))
        except (rtmidi.RtMidiError, ValueError, TypeError):
            pass
    note = b"\x9b\x3d\x4d"
    out.send_message(list(note))  # the next valid note
    got: list[bytes] = []
    while (m := inp.receive(timeout=3)) is not None:
        got.append(m[0])
        if m[0] == note:
            break
    assert got and got[-1] == note, (pieces, got)


def test_a_burst_that_overflows_the_drivers_queue_is_counted(jack_server, monkeypatch, capfd):
    """rtmidi says it lost messages only on stderr (no error callback): a drain that finds its
    queue full must count an overflow. A queue of 64 against a burst of 2,000 notes."""
    monkeypatch.setattr(input_mod, "QUEUE_SIZE", 64)
    with MidiInput("small in", virtual=True, client_name="smallq") as inp:
        out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="burster")
        try:
            out.open_port(out.get_ports().index("smallq:small in"))
            time.sleep(system_mod.JACK_SETTLE_S)
            for k in range(2000):
                out.send_message([0x90, k % 128, 1])
            got = drain(inp, 2000, timeout=2)
        finally:
            out.close_port()
            out.delete()
    assert "queue limit reached" in capfd.readouterr().err  # rtmidi did lose some
    assert len(got) < 2000 and inp.dropped.overflow >= 1 and inp.dropped.total == inp.dropped.overflow


def test_callback_input_and_echo_of_our_own_notes(loop):
    from musebridge.bridge.safety import EchoGuard

    out, inp = loop
    out.echo = guard = EchoGuard()  # a session's own guard, told what the output sends
    seen: list[bytes] = []
    inp.callback = lambda m, t: seen.append(m)
    out.send(b"\x90\x3c\x64")
    assert wait_for(lambda: len(seen) == 1, 2)
    assert guard.is_echo(seen[0])  # our note, back through the loopback
    assert not guard.is_echo(b"\x90\x3e\x64")  # a note we never sent is the player's

    def boom(m: bytes, t: float) -> None:
        raise RuntimeError("bad listener")

    errors = inp.callback_errors
    inp.callback = boom
    out.send(b"\x80\x3c\x00")
    assert wait_for(lambda: inp.callback_errors == errors + 1, 2)  # counted, never raised into the driver
    assert inp.last_error == "RuntimeError: bad listener"


def test_unknown_port_names_are_one_line_errors_listing_what_exists(loop):
    with pytest.raises(MuseBridgeError) as e:
        MidiInput("Nope")
    msg = str(e.value)
    assert msg.startswith("no MIDI input port 'Nope'; available: ") and "MuseBridge Out" not in msg  # ours: not offered
    assert msg.endswith("(run `musebridge ports`)") and "\n" not in msg
    with pytest.raises(MuseBridgeError, match=r"^no MIDI output port 'Nope'; available: "):
        MidiOutput("Nope")


def test_ports_command_lists_the_virtual_ports(loop):
    with MidiInput():
        inputs, outputs = list_ports()
        assert "MuseBridge:MuseBridge Out" in inputs
        assert any(n.endswith(":MuseBridge In") for n in outputs)
        r = CliRunner().invoke(cli, ["ports"])
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0] == "MIDI API: jack"
        i_in, i_out = lines.index("inputs (use with --in):"), lines.index("outputs (use with --out):")
        assert "  MuseBridge:MuseBridge Out" in lines[i_in:i_out]
        assert any(line.endswith(":MuseBridge In") for line in lines[i_out:])
        r = CliRunner().invoke(cli, ["ports", "--api", "midi2"])
        assert r.exit_code == 2 and "Invalid value for '--api'" in r.output


def test_output_reconnects_when_its_peer_vanishes_and_returns(jack_server):
    peer = MidiInput("peer in", virtual=True, client_name="Peer")
    with MidiOutput("Peer:peer in") as out:
        assert out.name == "Peer:peer in" and out.connected()
        out.send(b"\x90\x30\x40")
        assert [m for m, _ in drain(peer, 1)] == [b"\x90\x30\x40"]
        peer.close()
        assert wait_for(lambda: not out.connected())
        assert not out.reconnect()  # not back yet
        peer = MidiInput("peer in", virtual=True, client_name="Peer")
        try:
            assert not out.connected()  # it came back, but we are not connected to the new one
            assert wait_for(out.reconnect)
            assert out.connected() and out.name == "Peer:peer in"
            time.sleep(0.02)
            out.send(b"\x90\x31\x40")
            assert [m for m, _ in drain(peer, 1)] == [b"\x90\x31\x40"]
        finally:
            peer.close()
    with pytest.raises(MuseBridgeError, match="is closed"):
        out.send(b"\xf8")


@pytest.mark.skipif(shutil.which("jack_midi_dump") is None, reason="jack_midi_dump (jackd2) is not installed")
def test_jack_midi_dump_receives_our_notes(jack_server):
    """jack_midi_dump's port shows up when it registers, before its client is active: what
    arrives before then is dropped by JACK. So probe (a note on an unused channel) until the
    dump prints, then send the real notes; every one of them must arrive, once, in order."""
    dump = subprocess.Popen(["jack_midi_dump", "mb-dump"], env=jack_server.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []
    reader = threading.Thread(target=lambda: [lines.append(ln.split(":", 1)[1].split()[:3])
                                              for ln in dump.stdout if ":" in ln], daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: "mb-dump:input" in list_ports()[1], 5), "jack_midi_dump's port did not appear"
        with MidiOutput("mb-dump:input") as out:
            def probe() -> bool:
                out.send(bytes([0x9F, 0x10, 1]))
                return wait_for(lambda: bool(lines), 0.1)
            assert wait_for(probe, 10, 0), "jack_midi_dump never printed a probe note"
            for p in (60, 64, 67):
                out.send(bytes([0x92, p, 90]))
                time.sleep(0.005)
                out.send(bytes([0x82, p, 0]))
            wait_for(lambda: len([ln for ln in lines if ln[0] == "82"]) >= 3, 5)
            time.sleep(0.1)  # duplicates, if any, would show up too
    finally:
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
        reader.join(5)
    want = []
    for p in (60, 64, 67):
        want += [["92", f"{p:02x}", "5a"], ["82", f"{p:02x}", "00"]]
    assert [ln for ln in lines if ln[0] != "9f"] == want, lines


# --- the private server itself ------------------------------------------------------------------------


def test_jack_server_starts_stops_and_cleans_up_after_itself(jack_server, tmp_path):
    from musebridge.bridge.jack_server import SHM, JackServer, remove_stale_shm, server_answers

    name = f"mb_extra_{system_mod.os.getpid()}"
    uid = system_mod.os.getuid()
    stale = [SHM / f"jack_{name}_{uid}_99", SHM / f"jack_sem.{uid}_{name}_ghost"]  # names jackd never makes
    for p in stale:  # what a killed server leaves: would make the next start fail
        p.write_bytes(b"")
    other = SHM / f"jack_{name}x_{uid}_0"  # a different server's file stays
    other.write_bytes(b"")
    try:
        with JackServer(name) as srv:
            assert srv.running and server_answers(name)
            assert not any(p.exists() for p in stale)
            with pytest.raises(MuseBridgeError, match="already running: pick another name"):
                JackServer(name).start()
            pid = srv.proc.pid
        assert not srv.running and not server_answers(name)
        assert not list(SHM.glob(f"jack_{name}_*")) and not list(SHM.glob(f"jack_sem.*_{name}_*"))
        with pytest.raises(ProcessLookupError):
            system_mod.os.kill(pid, 0)
        assert other.exists() and remove_stale_shm(name) == []
    finally:
        other.unlink(missing_ok=True)


def test_killed_servers_do_not_use_up_jacks_registry(jack_server):
    """JACK's registry holds 8 servers and a killed one never leaves it: after a few
    crashed test servers no new server could start ("Too many servers already active").
    `stop` after a kill gives the slot back, so nine crashes in a row leave room."""
    from musebridge.bridge.jack_server import JackServer, server_answers

    for i in range(9):
        srv = JackServer(f"mb_crash{i}_{system_mod.os.getpid()}").start()
        srv.kill()
        srv.stop()
    with JackServer(f"mb_after_{system_mod.os.getpid()}") as srv:
        assert server_answers(srv.name)


def test_jack_server_that_cannot_start_is_a_one_line_error():
    from musebridge.bridge.jack_server import JackServer

    with pytest.raises(MuseBridgeError, match=r"^JACK server 'mb_false' exited at start .*run `false -S"):
        JackServer("mb_false", jackd="false").start()
    with pytest.raises(MuseBridgeError, match="not found: install JACK"):
        JackServer("mb_x", jackd="no-such-jackd").start()


def test_close_waits_for_a_poller_still_in_a_slow_callback(jack_server):
    """Closing frees rtmidi's clients: never while the poller is still using them (a
    callback held up past the old 1 s join crashed the process under load)."""
    import threading
    import time

    entered = threading.Event()

    def slow(msg, t):
        entered.set()
        time.sleep(1.5)

    with MidiOutput(client_name="slowcb out") as out:
        inp = MidiInput("slowcb out:MuseBridge Out", callback=slow, client_name="slowcb in")
        try:
            assert wait_until(inp.connected, 5.0)
            out.send(b"\x90\x3c\x40")
            assert entered.wait(5.0)
        finally:
            inp.close()
        assert not inp._poller.is_alive()  # it left rtmidi before the clients were freed
