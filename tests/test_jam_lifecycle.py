"""`musebridge jam` as a user runs it, through its whole life on real JACK ports: a stop
that wins over any backlog of triggers, a JACK server that dies and comes back, every
started answer logged to its end and saved, and port errors that list only what the
user can connect to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from musebridge.bridge.jam_probe import Daw

# timing is judged here (exit within 1 s of a signal): never beside a training job
pytestmark = [pytest.mark.xdist_group("exclusive")]

TRIGGER_CC = 24


class Jam:
    """`musebridge jam ... --log-json` as a subprocess, its JSON events collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "musebridge", "jam", "--log-json", "--backend", "onnxruntime", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, env=env)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def wait_for(self, event: str, timeout: float, since: int = 0, **fields) -> dict | None:
        """The first `event` (from index `since`) whose fields match, waiting up to `timeout` s."""
        end = time.monotonic() + timeout
        exited_at = None
        while True:
            for e in list(self.events[since:]):
                if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            if exited_at is None and self.proc.poll() is not None:
                exited_at = time.monotonic()
            if time.monotonic() >= end or (exited_at is not None and time.monotonic() - exited_at > 0.5):
                return None  # (after an exit, the reader gets half a second to catch up)
            time.sleep(0.01)

    def named(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def test_sigterm_wins_over_a_backlog_of_triggers(jack_server):
    """30 trigger CCs 10 ms apart queue 30 answers; SIGTERM must still exit within 1 s, rc 0,
    with every note that went out released (before: the worker drained its queue, each
    trigger cleared the cancel flag stop had set, and the process died by SIGABRT after 5 s)."""
    jam = Jam("--mode", "oneshot", "--trigger-cc", str(TRIGGER_CC), "--bars", "2", "--seed", "1",
              "--strength", "drums=0")
    daw = None
    try:
        assert jam.wait_for("ready", 60), "".join(jam.stderr)
        daw = Daw("f12")
        daw.out.send([0xB0, TRIGGER_CC, 127])  # one answer first, so notes sound when the burst comes
        end = time.monotonic() + 20
        while daw.first_note_after(0) is None and time.monotonic() < end:
            time.sleep(0.01)
        assert daw.first_note_after(0) is not None, "no answer note went out: the release check would be vacuous"
        for _ in range(30):
            daw.out.send([0xB0, TRIGGER_CC, 127])
            time.sleep(0.01)
        t_sig = time.monotonic()
        jam.proc.send_signal(signal.SIGTERM)
        try:
            rc = jam.proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t_sig
        time.sleep(0.2)  # the last releases travel through the server
        sounding = daw.sounding()
    finally:
        jam.kill()
        if daw is not None:
            daw.close()
    print(f"exit {took:.3f} s after SIGTERM with 30 triggers queued, rc {rc}")
    assert rc == 0, f"rc {rc} after {took:.2f} s: {''.join(jam.stderr)[-2000:]}"
    assert took <= 1.0, f"took {took:.2f} s to exit after SIGTERM"
    assert not sounding, f"notes left sounding: {sorted(sounding)}"
    assert jam.named("stopped"), "no stopped event"


def test_every_started_answer_ends_and_a_cancelled_take_is_saved(jack_server, tmp_path):
    """A trigger during an answer cancels it: it still logs `answer_end` (cancelled, with the
    notes it played) and `--save` writes what sounded, marked cancelled; the answer cut by
    the stop ends too (before: `phrase_end` without `answer_end`, and nothing saved)."""
    from musebridge.engine.music.midi_file import read_metadata, read_midi

    takes = tmp_path / "takes"
    jam = Jam("--mode", "oneshot", "--trigger-cc", str(TRIGGER_CC), "--bars", "4", "--seed", "3",
              "--strength", "drums=0", "--save", str(takes))
    daw = None
    try:
        assert jam.wait_for("ready", 60), "".join(jam.stderr)
        daw = Daw("takes")
        daw.out.send([0xB0, TRIGGER_CC, 127])
        assert jam.wait_for("answer_start", 20), "the first answer never sounded"
        time.sleep(0.6)  # a few of its notes go out
        daw.out.send([0xB0, TRIGGER_CC, 127])  # the next one cancels it
        first = jam.wait_for("answer_end", 10, tag=1)
        assert jam.wait_for("answer_start", 20, tag=2), "the second answer never sounded"
        jam.proc.send_signal(signal.SIGTERM)
        rc = jam.proc.wait(10)
        time.sleep(0.2)
    finally:
        jam.kill()
        if daw is not None:
            daw.close()
    assert rc == 0, "".join(jam.stderr)[-2000:]
    ends = {e["tag"]: e for e in jam.named("answer_end")}
    assert len(jam.named("phrase_end")) == 2 and sorted(ends) == [1, 2], jam.events
    assert first is not None and first["cancelled"] is True and first["notes"] >= 1, first
    assert ends[2]["cancelled"] is True, "the stop cut the second answer short"
    files = sorted(takes.glob("*.mid"))
    metas = [read_metadata(f) for f in files]
    assert len(files) == sum(1 for e in ends.values() if e["notes"]) and all(m["cancelled"] for m in metas), metas
    notes = sorted(len(read_midi(f).notes) for f in files)
    assert notes == sorted(e["notes"] for e in ends.values() if e["notes"]), (notes, ends)


def test_jam_in_unknown_port_lists_only_other_programs_ports(jack_server):
    """`jam --in Nope`: one error line offering the ports of other programs, never the
    jam's own output (opened first; before, it was listed as an input to connect to)."""
    from musebridge.bridge.ports import MidiOutput

    from musebridge.bridge.midi_input import MidiInput

    with MidiOutput("Keys Out", virtual=True, client_name="keys"), MidiInput("Synth", virtual=True, client_name="synth"):
        for out in ([], ["--out", "synth:Synth"]):  # our output virtual, or connected to a synth by name
            r = subprocess.run([sys.executable, "-m", "musebridge", "jam", *out, "--in", "Nope", "--backend",
                                "onnxruntime"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert lines[0].startswith("error: no MIDI input port 'Nope'; available: ") and "keys:Keys Out" in lines[0]
            assert "MuseBridge Out" not in lines[0], (out, lines[0])


PLAYER = """
import sys, time
from musebridge.bridge.jam_probe import Daw
daw = Daw("after")
daw.note(62, True); time.sleep(0.1); daw.note(62, False)
end = time.monotonic() + 8
while daw.first_note_after(0) is None and time.monotonic() < end:
    time.sleep(0.01)
ok = daw.first_note_after(0) is not None
daw.close()
sys.exit(0 if ok else 1)
"""


def test_jack_server_dies_and_returns():
    """kill -9 of the JACK server: the jam says so (`error`, `port_lost`), and when a server
    of that name is back it re-creates its ports within 2 s and answers again; a server
    that never returns makes the jam exit nonzero with one clear line (before: no event,
    no ports ever again, and a clean "stopped")."""
    from musebridge.bridge.jack_server import JackServer, remove_stale_shm

    name = f"mbf13_{os.getpid()}"
    srv = JackServer(name).start()  # our own server: the shared fixture's is never killed
    env = {**srv.env, "MUSEBRIDGE_MIDI_API": "jack"}
    jam = Jam("--mode", "call", "--bars", "0.5", "--silence", "0.5", "--seed", "2", "--strength", "drums=0", env=env)
    srv2 = None
    try:
        assert jam.wait_for("ready", 60), "".join(jam.stderr)
        n = len(jam.events)
        srv.kill()
        err = jam.wait_for("error", 3, since=n, cause="port_lost")
        assert err is not None and jam.wait_for("port_lost", 1, since=n), jam.events[n:]
        remove_stale_shm(name)  # what a killed server leaves; its registry slot goes when the name returns
        srv2 = JackServer(name).start()
        t_back = time.monotonic()
        back = jam.wait_for("port_restored", 5, since=n)
        took = time.monotonic() - t_back
        assert back is not None, jam.events[n:]
        # a player on the new server, in its own process: libjack keeps one server per process
        r = subprocess.run([sys.executable, "-c", PLAYER], env=env, capture_output=True, text=True, timeout=60)
        answered = r.returncode == 0
        print(f"ports back {took:.2f} s after the server")
        assert took <= 2.0, f"ports back only {took:.2f} s after the server"
        assert answered, f"no answer after the server came back: {r.stderr[-1000:]}"
        n = len(jam.events)
        srv2.kill()  # and now it never comes back
        assert jam.wait_for("port_lost", 3, since=n), jam.events[n:]
        jam.proc.send_signal(signal.SIGTERM)
        rc = jam.proc.wait(10)
    finally:
        jam.kill()
        for s in (srv2, srv):  # after the jam: a killed server is started and stopped once more (JackServer.stop)
            if s is not None:
                s.stop()
        remove_stale_shm(name)
    time.sleep(0.2)
    lines = [line for line in "".join(jam.stderr).splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "JACK server stopped" in lines[0], (rc, "".join(jam.stderr)[-1500:])


PEER = """
import sys, time
from musebridge.bridge.midi_input import MidiInput
from musebridge.bridge.ports import MidiOutput
got = []
synth = MidiInput("Synth", virtual=True, client_name="synth", callback=lambda m, t: got.append(m))
keys = MidiOutput("Keys", virtual=True, client_name="keys")
print("up", flush=True)
for line in sys.stdin:  # "play": a phrase, then say whether an answer came; "quit": leave
    if line.strip() != "play":
        break
    n = len(got)
    keys.send([0x90, 62, 100]); time.sleep(0.1); keys.send([0x80, 62, 0])
    end = time.monotonic() + 8
    while not any(m[0] & 0xF0 == 0x90 and m[2] > 0 for m in got[n:]) and time.monotonic() < end:
        time.sleep(0.01)
    print("answered" if any(m[0] & 0xF0 == 0x90 and m[2] > 0 for m in got[n:]) else "silent", flush=True)
keys.close(); synth.close()
"""


class Peer:
    """A synth and a keyboard, another program's ports ("keys:Keys", "synth:Synth")."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", PEER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "up", self.proc.stderr.read()[-1000:]

    def play(self) -> bool:
        self.proc.stdin.write("play\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "answered"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def test_named_connections_come_back_with_the_jack_server():
    """`--in keys:Keys --out synth:Synth`: after the server dies and returns with the peer
    on it again, the jam connects to the peer's ports by name and answers it."""
    from musebridge.bridge.jack_server import JackServer, remove_stale_shm

    name = f"mbf13n_{os.getpid()}"
    srv = JackServer(name).start()
    env = {**srv.env, "MUSEBRIDGE_MIDI_API": "jack"}
    peer = Peer(env)
    jam = Jam("--in", "keys:Keys", "--out", "synth:Synth", "--mode", "call", "--bars", "0.5", "--silence", "0.5",
              "--seed", "2", "--strength", "drums=0", env=env)
    srv2 = peer2 = None
    try:
        assert jam.wait_for("ready", 60), "".join(jam.stderr)
        assert peer.play(), "no answer before the server died: the test would be vacuous"
        n = len(jam.events)
        srv.kill()
        assert jam.wait_for("error", 3, since=n, cause="port_lost"), jam.events[n:]
        peer.close()
        remove_stale_shm(name)
        srv2 = JackServer(name).start()
        # the jam's ports come back first, its peer a moment later (as a DAW restarting after
        # the server): the named connections are then made by the reconnect loop
        assert jam.wait_for("port_restored", 5, since=n), jam.events[n:]
        peer2 = Peer(env)
        t_peer = time.time()  # the clock of the events' "t"

        def connected(role: str) -> float | None:
            """When the jam had `role` connected to the peer again (restored with the
            server, or reconnected by name after it)."""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for e in jam.events[n:]:
                    if (e["event"] == "port_restored" and role not in e["waiting"]) or \
                            (e["event"] == "port" and e.get("role") == role and e.get("state") == "connected"):
                        return e["t"]
                time.sleep(0.01)
            return None

        back = [connected("input"), connected("output")]
        assert None not in back, jam.events[n:]
        took = max(0.0, max(back) - t_peer)
        print(f"named ports connected again {took:.2f} s after the peer was back")
        assert took <= 2.0, f"connected again only {took:.2f} s after the peer was back: {jam.events[n:]}"
        assert peer2.play(), f"no answer after the server and the peer came back: {jam.events[n:]}"
        jam.proc.send_signal(signal.SIGTERM)
        rc = jam.proc.wait(10)
    finally:
        jam.kill()
        for p in (peer2, peer):
            if p is not None:
                p.close()
        for s in (srv2, srv):
            if s is not None:
                s.stop()
        remove_stale_shm(name)
    assert rc == 0, "".join(jam.stderr)[-1500:]
