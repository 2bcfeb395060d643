"""Measure a real jam through real ports: `python -m musebridge.bridge.jam_probe`.

A stand-in DAW (`Daw`: a MIDI clock source, a player, a listener) drives `musebridge jam`
running as its own process on JACK MIDI ports, exactly as a user runs it, and reports:
phrase end -> first token ready (and how many answers had it sampled ahead, in the
silence) and -> first note out, where the first note landed
against the bar line it was due on (as the DAW hears it), the jam's own send jitter, and
the jam process's CPU load. Starts a private JACK server when none is running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .midi_input import MidiInput
from .ports import MidiOutput, list_ports


def bridge_port(kind: str, api: str = "jack") -> str:
    """The full name of MuseBridge's own virtual port ("In" or "Out")."""
    ins, outs = list_ports(api)
    names = outs if kind == "In" else ins  # the DAW sends to its input, listens to its output
    return next(p for p in names if p.split(":")[0].startswith("MuseBridge") and p.endswith(f":MuseBridge {kind}"))


class Daw:
    """A DAW stand-in: MIDI clock on a realtime thread, a player, and a listener that
    tracks every note MuseBridge sends (individual note-offs only: CC123 does not count)."""

    def __init__(self, client: str):
        self.out = MidiOutput(bridge_port("In"), client_name=client)
        self.got: list[tuple[bytes, float]] = []
        self.inp = MidiInput(bridge_port("Out"), client_name=client, callback=lambda m, t: self.got.append((m, t)))
        self.tick_times: list[float] = []
        self._clock: threading.Thread | None = None
        self._stop = threading.Event()
        self.t0 = 0.0
        self.period = 60.0 / 120.0 / 24

    def start_clock(self, bpm: float = 120.0) -> None:
        period = self.period = 60.0 / bpm / 24
        self.t0 = t0 = time.perf_counter() + 0.01 + period

        def run() -> None:
            try:  # like a DAW's clock thread: realtime priority where allowed
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
            except (AttributeError, OSError):
                pass
            while time.perf_counter() < t0 - period:
                pass
            self.out.send([0xFA])
            k = 0
            while not self._stop.is_set():
                due = t0 + k * period
                while time.perf_counter() < due - 0.002:
                    time.sleep(0.001)
                while time.perf_counter() < due:
                    pass
                self.out.send([0xF8])
                self.tick_times.append(time.perf_counter())
                k += 1
            self.out.send([0xFC])

        self._clock = threading.Thread(target=run, daemon=True)
        self._clock.start()

    def tick_time(self, beat: float) -> float:
        """When the clock tick of `beat` is due on the DAW's own timeline."""
        return self.t0 + int(round(beat * 24)) * self.period

    def note(self, pitch: int, on: bool, ch: int = 0) -> None:
        self.out.send([0x90 | ch, pitch, 100] if on else [0x80 | ch, pitch, 0])

    def first_note_after(self, n: int) -> float | None:
        return next((t for m, t in self.got[n:] if m[0] & 0xF0 == 0x90 and m[2] > 0), None)

    def sounding(self) -> set[tuple[int, int]]:
        s: set[tuple[int, int]] = set()
        for m, _ in list(self.got):
            kind, ch = m[0] & 0xF0, m[0] & 0x0F
            if kind == 0x90 and m[2] > 0:
                s.add((ch, m[1]))
            elif kind == 0x80 or (kind == 0x90 and m[2] == 0):
                s.discard((ch, m[1]))
        return s

    def close(self) -> None:
        self._stop.set()
        if self._clock is not None:
            self._clock.join(2)
        self.inp.close()
        self.out.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(a) -> dict:
    a = np.asarray(a, float)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(np.abs(a).max()), 3), "n": int(a.size)}


def probe(answers: int = 30, bpm: float = 120.0, backend: str = "auto", extra: list[str] | None = None) -> dict:
    """Run `musebridge jam` in call-and-response under MIDI clock and measure `answers` answers."""
    cmd = [sys.executable, "-m", "musebridge", "jam", "--log-json", "--mode", "call", "--bars", "1", "--silence", "0.75",
           "--backend", backend, "--seed", "1", "--strength", "drums=0", *(extra or [])]
    jam = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log: list[dict] = []
    threading.Thread(target=lambda: [log.append(json.loads(line)) for line in jam.stdout if line.startswith("{")],
                     daemon=True).start()
    deadline = time.monotonic() + 120
    while not any(r["event"] == "ready" for r in log):
        if jam.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"musebridge jam did not start: {jam.stderr.read()[-500:]}")
        time.sleep(0.05)
    daw = Daw("probe-daw")
    bar_err, phrase_to_note = [], []
    try:
        daw.start_clock(bpm)
        time.sleep(2.5)
        cpu0, wall0 = _cpu_seconds(jam.pid), time.perf_counter()
        bar = 2
        while len(bar_err) < answers and bar < answers * 3 + 10:
            t_play = daw.tick_time(bar * 4 + 2)  # play on beat 3: the answer is due on the next bar
            while time.perf_counter() < t_play:
                time.sleep(0.0005)
            n = len(daw.got)
            daw.note(60 + bar % 12, True)
            time.sleep(0.1)
            daw.note(60 + bar % 12, False)
            t_off = time.perf_counter()
            due = daw.tick_time(bar * 4 + 4)
            while daw.first_note_after(n) is None and time.perf_counter() < due + 2.0:
                time.sleep(0.002)
            first = daw.first_note_after(n)
            if first is not None:
                bar_err.append((first - due) * 1e3)
                phrase_to_note.append((first - t_off) * 1e3)
            bar += 2  # the 1-bar answer plays in the next bar; play again after it
        cpu = (_cpu_seconds(jam.pid) - cpu0) / (time.perf_counter() - wall0)
    finally:
        jam.terminate()  # SIGTERM: the jam must release every note before it exits
        jam.wait(15)
        time.sleep(0.1)
        left = len(daw.sounding())
        daw.close()
    stopped = next((r for r in log if r["event"] == "stopped"), {})
    starts = [r for r in log if r["event"] == "answer_start"]
    ends = [r for r in log if r["event"] == "answer_end"]
    return {
        "answers": len(bar_err), "bpm": bpm, "backend": next((r.get("backend") for r in log if r["event"] == "ready"), None),
        "bar_line_error_ms": _pct(bar_err),
        "phrase_end_to_first_token_ms": _pct([r["first_token_ms"] for r in starts if r.get("first_token_ms") is not None] or [0]),
        "phrase_end_to_first_note_ms": _pct(phrase_to_note),
        "answers_speculated": sum(1 for r in ends if r.get("speculated")),  # first tokens sampled in the silence
        "send_jitter_ms": stopped.get("jitter"),
        "jam_cpu_load_percent_of_one_core": round(100 * cpu, 1),
        "notes_left_sounding_after_sigterm": left,
        "note": "phrase end = the player's last note-off; the answer waits for the next bar line, so phrase end -> first "
                "note includes that wait (0.75 beat of silence ends the phrase, then up to a bar)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=30)
    ap.add_argument("--bpm", type=float, default=120.0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from .jack_server import jack_for_tools

    with jack_for_tools("mbprobe"):
        report = probe(args.answers, args.bpm, args.backend)
    print_report(report, args.json)


def print_report(report, path: str | None) -> None:
    """Print a tool's JSON report, and write it to `path` (atomically) if given."""
    from musebridge.files import write_atomic

    text = json.dumps(report, indent=1)
    print(text)
    if path:
        write_atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


if __name__ == "__main__":
    main()
