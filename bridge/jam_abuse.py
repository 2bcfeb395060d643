"""Abuse a real jam through real ports: `python -m musebridge.bridge.jam_abuse`.

The reliability targets of a live jam, measured the way a hostile DAW would test them:
`musebridge jam` runs as its own process on JACK MIDI ports (a private server is started
when none answers), and a stand-in DAW (`jam_probe.Daw`) throws at it, per mode:

1. a phrase, to see that it answers at all;
2. garbage: random bytes, torn sysex (`F0` with no `F7`), stray data bytes, undefined
   status bytes, real-time bytes inside messages -- then a phrase, which must be heard
   and answered;
3. a flood of note-ons/offs (`--flood-rate` a second for `--flood-s` seconds): every
   message is either taken in or counted as dropped;
4. transport abuse: Start/Stop/Continue, song position jumps and clock bursts while
   phrases are played;
5. a backlog of 30 trigger CCs 10 ms apart, then SIGTERM: the jam must exit within a
   second with rc 0.

After the jam exits, every note it sent must have been released (`hung_notes`: notes the
DAW still hears sounding; CC 123 does not count). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import threading
import time

from .jam_probe import Daw, print_report

TRIGGER_CC = 24
GARBAGE_CHUNKS = 400


def garbage_chunks(rng: random.Random, n: int = GARBAGE_CHUNKS) -> list[list[int]]:
    """Byte strings rtmidi will send as they are: 1-3 bytes of anything, or a torn sysex
    (rtmidi refuses longer messages that do not start with F0)."""
    out: list[list[int]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            out.append([0xF0] + [rng.randrange(256) for _ in range(rng.randrange(0, 12))])  # torn or odd sysex
        elif kind < 0.3:
            out.append([rng.randrange(0x80)] * rng.randrange(1, 4))  # stray data bytes
        elif kind < 0.4:
            out.append([rng.choice([0xF4, 0xF5, 0xF9, 0xFD, 0xF1, 0xF2, 0xF3, 0xF7])])
        elif kind < 0.5:  # a channel message torn by a real-time byte or cut short
            status = rng.randrange(0x80, 0xF0)
            out.append([status, rng.choice([0xF8, 0xFA, 0xFE, rng.randrange(0x80)])][: rng.randrange(1, 3)])
        else:
            out.append([rng.randrange(256) for _ in range(rng.randrange(1, 4))])
    return out


class Jam:
    """`musebridge jam --log-json` as a child process, its log collected on a thread."""

    def __init__(self, mode: str, extra: list[str]):
        cmd = [sys.executable, "-m", "musebridge", "jam", "--log-json", "--mode", mode, "--bars", "1",
               "--silence", "0.5", "--seed", "1", "--trigger-cc", str(TRIGGER_CC), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 120
        while not self.events("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"musebridge jam did not start: {''.join(self.stderr)[-500:]}")
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                try:
                    self.log.append(json.loads(line))
                except ValueError:
                    self.log.append({"event": "unparsable", "line": line[:200]})

    def events(self, name: str) -> list[dict]:
        return [r for r in list(self.log) if r.get("event") == name]

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; (return code, seconds to exit), None when it had to be killed."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        return rc, time.perf_counter() - t0


def _phrase(daw: Daw, base: int, mode: str) -> None:
    for i, p in enumerate((base, base + 4, base + 7, base + 12)):
        daw.note(p, True)
        time.sleep(0.12)
        daw.note(p, False)
        time.sleep(0.03)
    if mode == "oneshot":
        daw.out.send([0xB0, TRIGGER_CC, 127])


def _answered(daw: Daw, since: int, timeout: float = 6.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daw.first_note_after(since) is not None:
            return True
        time.sleep(0.01)
    return False


def abuse(mode: str, seed: int = 1, flood_rate: float = 2000.0, flood_s: float = 2.0,
          extra: list[str] | None = None) -> dict:
    """Run the five scenarios against one jam in `mode`; a dict of what held."""
    rng = random.Random(seed)
    jam = Jam(mode, extra or [])
    daw = Daw(f"abuse-{mode}")
    out: dict = {"mode": mode}
    try:
        time.sleep(0.5)
        n = len(daw.got)
        _phrase(daw, 60, mode)
        out["answered_clean"] = _answered(daw, n)
        time.sleep(2.5)

        heard, missed = 0, []
        rounds = 5
        for r in range(rounds):  # garbage, then a phrase that must be heard
            for chunk in garbage_chunks(rng, GARBAGE_CHUNKS // rounds):
                try:
                    daw.out.send(chunk)
                except Exception:
                    pass  # rtmidi refused it: not something a DAW could send either
            daw.out.send([0xB0, 123, 0])  # the player's own all-notes-off, as a DAW sends on stop
            time.sleep(0.3)
            n, logged = len(daw.got), len(jam.log)
            _phrase(daw, 62 + r, mode)
            ok = _answered(daw, n)
            heard += ok
            if not ok:  # what the jam said meanwhile, to tell a deaf jam from a muted one
                missed.append([{k: v for k, v in e.items() if k != "t"} for e in jam.log[logged:]][:12])
            time.sleep(2.0)
        out["answered_after_garbage"] = f"{heard}/{rounds}"
        out["missed"] = missed

        sent = 0  # flood: note-on/off pairs, as a fast arpeggiator or a stuck sequencer
        period, t0 = 1.0 / flood_rate, time.perf_counter()
        while time.perf_counter() - t0 < flood_s:
            k = sent // 2
            daw.note(36 + k % 48, sent % 2 == 0)
            sent += 1
            due = t0 + sent * period
            while time.perf_counter() < due:
                pass
        for p in range(36, 84):
            daw.note(p, False)
        out["flood_sent"] = sent + 48
        time.sleep(2.0)

        daw.start_clock(120.0)  # transport abuse under a running clock
        for _ in range(40):
            choice = rng.random()
            if choice < 0.3:
                daw.out.send([rng.choice([0xFA, 0xFB, 0xFC])])
            elif choice < 0.5:
                pos = rng.randrange(0, 1 << 14)
                daw.out.send([0xF2, pos & 0x7F, pos >> 7])
            elif choice < 0.7:
                for _ in range(rng.randrange(10, 100)):
                    daw.out.send([0xF8])
            else:
                _phrase(daw, 55 + rng.randrange(12), mode)
            time.sleep(rng.uniform(0.0, 0.2))
        daw.out.send([0xFA])
        time.sleep(1.0)
        n, logged = len(daw.got), len(jam.log)
        _phrase(daw, 64, mode)
        out["answered_after_transport"] = _answered(daw, n)
        if not out["answered_after_transport"]:
            missed.append([{k: v for k, v in e.items() if k != "t"} for e in jam.log[logged:]][:12])

        for _ in range(30):  # the backlog, then the signal
            daw.out.send([0xB0, TRIGGER_CC, 127])
            time.sleep(0.01)
        rc, seconds = jam.stop()
        out["sigterm_rc"], out["sigterm_exit_s"] = rc, round(seconds, 3)
        time.sleep(0.2)
        out["hung_notes"] = len(daw.sounding())
    finally:
        if jam.proc.poll() is None:
            jam.proc.kill()
        daw.close()
    stopped = (jam.events("stopped") or [{}])[-1]
    out["input_dropped"] = stopped.get("input_dropped")
    out["counters"] = stopped.get("counters")  # notes_in, echo, ignored: what was taken in
    # garbage holds valid control changes too: a CC 22 switches the mode, CC 102-114 mute
    # families, CC 23 panics -- what the jam did about them, beside whether it answered
    out["controls_changed_by_garbage"] = {e: len(jam.events(e)) for e in ("mode", "control", "panic", "midi_learn")}
    out["errors"] = [r.get("message") for r in jam.events("error")][:5]
    out["tracebacks"] = sum("Traceback" in line for line in jam.stderr)
    out["unexpected"] = sum("unexpected" in line for line in jam.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="call,accompany,oneshot")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flood-rate", type=float, default=2000.0)
    ap.add_argument("--flood-s", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from .jack_server import jack_for_tools

    with jack_for_tools("mbabuse"):
        report = [abuse(m, args.seed, args.flood_rate, args.flood_s) for m in args.modes.split(",")]
    print_report(report, args.json)


if __name__ == "__main__":
    main()
