"""A private, headless JACK server: for tests, CI, and machines with no ALSA sequencer.

Why these flags (measured on a 2-core Linux box): `-S` (synchronous mode) makes the
server wait for every client each cycle, so clients cannot lose or duplicate events
between them (measured with Python callbacks in JACK's process thread, before the input
polled from a thread of its own: asynchronous 1-39 of 2,000 notes lost or doubled;
synchronous 0 of 10,000, p99 latency 3-4 ms); `--no-realtime` needs no rtprio limits; the `dummy`
driver needs no sound card. A killed server leaves its shared-memory files behind and
the next start with the same name then fails ("server already active"), so they are
removed before starting and after stopping.

Clients find the server through `JACK_DEFAULT_SERVER=NAME`; `JACK_NO_START_SERVER=1`
stops libjack from starting a default server of its own when this one is not up.

The price of `-S`: on a CPU-starved machine, many clients opening and closing at once
can stall it (client deactivation waits time out after 5 s, new clients are refused for
a moment). Keep clients open rather than churning them; `ports` retries a refused open.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from musebridge.errors import MuseBridgeError

SHM = Path("/dev/shm")
POLL_S = 0.05
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def jack_env(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a JACK client needs to reach server `name` (and never start another)."""
    env = dict(os.environ if base is None else base)
    env["JACK_DEFAULT_SERVER"] = name
    env["JACK_NO_START_SERVER"] = "1"
    return env


def server_answers(name: str | None = None, timeout_s: float = 2.0) -> bool:
    """True if a JACK server (`name`, else the environment's default) accepts a client.

    Uses `jack_lsp` (ships with jackd2) in a subprocess, so a missing server costs no
    stderr noise or stray client in this process.
    """
    if shutil.which("jack_lsp") is None:
        return False
    env = jack_env(name) if name else {**os.environ, "JACK_NO_START_SERVER": "1"}
    try:
        r = subprocess.run(["jack_lsp"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies (even by SIGKILL), so
    a killed test run or app never leaves an orphaned server behind. Linux only; note
    that Linux ties this to the starting *thread*, so start servers from a long-lived one."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def remove_stale_shm(name: str) -> list[str]:
    """Delete the shared-memory files a dead server `name` left behind; returns what went."""
    gone = []
    uid, esc = os.getuid(), glob.escape(name)
    for pattern in (f"jack_{esc}_{uid}_*", f"jack_sem.{uid}_{esc}_*"):
        for path in glob.glob(str(SHM / pattern)):
            try:
                os.unlink(path)
                gone.append(path)
            except FileNotFoundError:
                pass
    return gone


class JackServer:
    """`with JackServer("name") as srv:` runs `jackd` until the block ends.

    `rate` and `period` set the dummy driver's cycle (128 frames at 48 kHz = 2.7 ms, the
    granularity of MIDI timing through the server).
    """

    def __init__(self, name: str, rate: int = 48000, period: int = 128, jackd: str = "jackd"):
        if not name or "/" in name or name != name.strip():
            raise MuseBridgeError(f"JACK server name {name!r} is invalid: use a plain word")
        self.name = name
        self.rate = rate
        self.period = period
        self.jackd = jackd
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None  # jackd's output: a file, so a full pipe never blocks it

    @property
    def env(self) -> dict[str, str]:
        """Environment for client subprocesses (jack_midi_dump, fluidsynth, ...)."""
        return jack_env(self.name)

    @property
    def command(self) -> list[str]:
        return [self.jackd, "-S", "--no-realtime", "-n", self.name, "-d", "dummy",
                "-r", str(self.rate), "-p", str(self.period)]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "JackServer":
        """Start jackd and return once a client can connect (`jack_lsp` succeeds)."""
        exe = shutil.which(self.jackd)
        if exe is None:
            raise MuseBridgeError(f"{self.jackd} not found: install JACK (Debian: apt-get install jackd2)")
        if self.proc is not None:
            return self
        if server_answers(self.name):  # someone else's: removing its files would break it
            raise MuseBridgeError(f"a JACK server named {self.name!r} is already running: pick another name or stop it")
        remove_stale_shm(self.name)
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.output().strip().splitlines()
                self.stop()
                last = lines[-1] if lines else "no output"
                raise MuseBridgeError(f"JACK server {self.name!r} exited at start ({last}); "
                                      f"run `{' '.join(self.command)}` to see why")
            if server_answers(self.name, timeout_s=2.0):
                return self
            time.sleep(POLL_S)
        self.stop()
        raise MuseBridgeError(f"JACK server {self.name!r} did not answer within {timeout_s:.0f} s; "
                              f"run `{' '.join(self.command)}` to see why")

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s (jackd takes 4-6 s if a client just left), then SIGKILL.

        A server that did not end cleanly (killed, crashed) is started once more under its
        name and stopped cleanly: see `_reclaim`.
        """
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        remove_stale_shm(self.name)
        if proc is not None and proc.returncode is not None and proc.returncode < 0 \
                and proc.returncode != -signal.SIGTERM:
            self._reclaim()

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (for tests of a server that dies under a jam);
        `stop` still tidies up after it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def _reclaim(self) -> None:
        """Free this name's slot in JACK's registry of servers.

        jackd registers itself in `/dev/shm/jack-shm-registry`, which holds 8 servers; one
        that is killed never unregisters, and JACK reclaims a dead entry only when a server
        of the same name starts (measured: after a few killed test servers every new one
        failed with "Too many servers already active"). Starting this name again and
        stopping it with SIGTERM lets JACK's own code clear the slot.
        """
        again = JackServer(self.name, self.rate, self.period, self.jackd)
        try:
            again.start()
        except MuseBridgeError:
            return  # nothing more to do: the next start of any server will say why
        again.stop()

    def output(self) -> str:
        """What jackd printed so far (for diagnosing a failed start)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"JackServer({self.name!r}, running={self.running})"


@contextmanager
def jack_for_tools(prefix: str) -> Iterator[JackServer | None]:
    """For the measuring tools (`jam_probe`, `jam_abuse`): the JACK server the environment
    names if one answers, else a private one started for the block (and the environment
    pointed at it, so the jam child process finds it too)."""
    server = None
    if os.environ.get("MUSEBRIDGE_MIDI_API", "jack") == "jack" and not server_answers(None, timeout_s=1.0):
        server = JackServer(f"{prefix}_{os.getpid()}")
        server.start()
        os.environ.update(server.env)
    os.environ.setdefault("MUSEBRIDGE_MIDI_API", "jack")
    try:
        yield server
    finally:
        if server is not None:
            server.stop()
