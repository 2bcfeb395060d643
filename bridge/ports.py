"""MIDI ports by name, mido-style, over python-rtmidi.

`MidiInput()` / `MidiOutput()` open a *virtual* port others connect to ("MuseBridge In" /
"MuseBridge Out" of client "MuseBridge"); `MidiInput("Keystation")` *connects* to an
existing port, matched exactly, else by case-insensitive substring. Messages are plain
`bytes`, one complete message each (inputs parse the driver's bytes as a stream, see
`MidiInput`). Inputs time each message on the `time.perf_counter()` clock (from the
driver's own stamps, `ArrivalClock`), because the clock follower and phrase detection
need arrival times on the same clock the scheduler sends by.

Which MIDI system (`resolve_api`): ALSA on Linux when the sequencer exists, else JACK
when a server answers; CoreMIDI on macOS; Windows MM on Windows, where virtual ports do
not exist (use loopMIDI and pass its port name). `MUSEBRIDGE_MIDI_API` overrides `auto`.

JACK note: rtmidi calls the input callback from JACK's process thread. Run the server
synchronous (`jackd -S ...`, as `JackServer` does): in the default asynchronous mode a
busy machine loses or duplicates events between clients (measured on 2 loaded cores,
2,000 notes 0.5 ms apart: 38 wrong with this callback, 75 when polling instead; with
`-S`: none).
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import shutil
import socket
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

import rtmidi

from musebridge.errors import MuseBridgeError

from .safety import RESET_SYSEX, DropCounters, EchoGuard, MidiParser

ENV_API = "MUSEBRIDGE_MIDI_API"
CLIENT_NAME = "MuseBridge"
DEFAULT_IN = "MuseBridge In"
DEFAULT_OUT = "MuseBridge Out"
ALSA_SEQ = "/dev/snd/seq"

APIS: dict[str, int] = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "windows": rtmidi.API_WINDOWS_MM,
}
API_CHOICES = ("auto", *APIS)
_API_NAMES = {v: k for k, v in APIS.items()}

Message = tuple[bytes, float]  # (message, perf_counter arrival time)
Callback = Callable[[bytes, float], None]


# --- which MIDI system ---------------------------------------------------------------------


def api_name(api: int) -> str:
    """'alsa', 'jack', ... for an rtmidi API constant."""
    return _API_NAMES.get(api, f"api {api}")


def resolve_api(name: str | int = "auto") -> int:
    """The rtmidi API constant for auto|alsa|jack|coremidi|windows.

    auto: $MUSEBRIDGE_MIDI_API if set; on Linux ALSA if its sequencer exists, else JACK if
    a server answers, else ALSA (opening a port then says what is missing); on macOS
    CoreMIDI, on Windows Windows MM.
    """
    if isinstance(name, int):
        if name not in _API_NAMES:
            raise MuseBridgeError(f"MIDI API {name} is unknown: use one of {', '.join(API_CHOICES)}")
        return name
    key = name.strip().lower()
    if key == "auto":
        env = os.environ.get(ENV_API, "").strip()
        if env and env.lower() != "auto":
            if env.lower() not in APIS:
                raise MuseBridgeError(f"{ENV_API}={env!r} is not a MIDI API: use one of {', '.join(API_CHOICES)}")
            return _compiled(env.lower())
        return _auto_api()
    if key not in APIS:
        raise MuseBridgeError(f"MIDI API {name!r} is unknown: use one of {', '.join(API_CHOICES)}")
    return _compiled(key)


def _compiled(key: str) -> int:
    api = APIS[key]
    have = rtmidi.get_compiled_api()
    if api not in have:
        raise MuseBridgeError(f"MIDI API {key} is not available on this system; "
                              f"this python-rtmidi has: {', '.join(api_name(a) for a in have) or 'none'}")
    return api


def _auto_api() -> int:
    have = rtmidi.get_compiled_api()
    if sys.platform.startswith("linux"):
        if rtmidi.API_LINUX_ALSA in have and os.path.exists(ALSA_SEQ):
            return rtmidi.API_LINUX_ALSA
        if rtmidi.API_UNIX_JACK in have and jack_running():
            return rtmidi.API_UNIX_JACK
        return rtmidi.API_LINUX_ALSA
    if sys.platform == "darwin":
        return rtmidi.API_MACOSX_CORE
    if sys.platform == "win32":
        return rtmidi.API_WINDOWS_MM
    return have[0] if have else rtmidi.API_UNSPECIFIED


def jack_running() -> bool:
    """True if the environment's JACK server answers (never starts one)."""
    from .jack_server import server_answers

    if server_answers(None, timeout_s=5.0):  # a busy server can take seconds to answer
        return True
    if shutil.which("jack_lsp") is not None:
        return False
    try:  # no jack_lsp: ask through rtmidi (libjack may print a line if there is no server)
        probe = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{CLIENT_NAME} probe")
    except rtmidi.RtMidiError:
        return False
    probe.delete()
    return True


JACK_OPEN_RETRIES_S = (0.1, 0.3, 0.6, 1.0, 2.0, 3.0)  # a busy server can stall new clients for seconds
JACK_SETTLE_S = 0.03  # a couple of JACK cycles, even at 1024 frames


def _rtmidi(cls: type, api: int, client_name: str):
    """An rtmidi MidiIn/MidiOut, or a one-line error saying what to start or install.

    A JACK server that is up can still refuse a new client for a moment ("Cannot open
    client": measured under CPU contention, while other clients come and go): that is
    retried a few times before giving up.
    """
    if api == rtmidi.API_LINUX_ALSA and sys.platform.startswith("linux") and not os.path.exists(ALSA_SEQ):
        raise _no_alsa()  # before ALSA's own library prints its complaint on stderr
    for delay in (*JACK_OPEN_RETRIES_S, None):
        try:
            return cls(api, name=client_name)
        except rtmidi.RtMidiError as e:
            error = e
            if api != rtmidi.API_UNIX_JACK or delay is None or not jack_running():
                break
            time.sleep(delay)
    if api == rtmidi.API_UNIX_JACK:
        server = os.environ.get("JACK_DEFAULT_SERVER")
        which = f"JACK server {server!r}" if server else "JACK server"
        if jack_running():
            raise MuseBridgeError(f"the {which} refused a new client (overloaded?): close some JACK clients "
                                  "or try again") from error
        raise MuseBridgeError(f"no {which} is running: start one (e.g. `jackd -S -d dummy`, or QjackCtl) "
                              f"or choose another --api") from error
    if api == rtmidi.API_LINUX_ALSA:
        raise _no_alsa() from error
    raise MuseBridgeError(f"cannot open MIDI ({api_name(api)}): {str(error).splitlines()[0]}") from error


def _no_alsa() -> MuseBridgeError:
    return MuseBridgeError(f"cannot open the ALSA sequencer ({ALSA_SEQ} missing?): load it with "
                           f"`modprobe snd-seq`, or start a JACK server and use --api jack")


# --- a JACK server that dies under us ------------------------------------------------------------
#
# Measured with python-rtmidi 1.5.8 and jackd2 1.9.21, server killed (-9 or TERM): our
# clients notice nothing (no error callback, is_port_open() stays True, get_ports() returns
# the old list, sends vanish), and closing or deleting such a client once this process
# has opened any new JACK client segfaults. So the server is watched from outside libjack
# (`jack_server_id`), and a client of a dead server is never closed: it is abandoned
# (`abandon`) and a new one made when the server is back.


def jack_server_id(name: str | None = None) -> tuple[int, int] | None:
    """Which JACK server instance (`name`, else the environment's) answers now, or None.

    Cheap enough to ask twice a second: a stat and a connect on the server's socket in
    /dev/shm, no JACK client. A server that was killed leaves the socket file (connect is
    refused); one restarted under the same name has a new file, so a different id."""
    name = name or os.environ.get("JACK_DEFAULT_SERVER") or "default"
    path = f"/dev/shm/jack_{name}_{os.getuid()}_0"
    try:
        st = os.stat(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            sock.connect(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


_abandoned: list = []  # clients of dead servers: kept alive so that nothing ever frees them


def abandon(rt) -> None:
    """Let go of an rtmidi client whose JACK server died, without closing it (that can
    segfault, see above). An extra reference keeps it from ever being freed, even at exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(rt))
    _abandoned.append(rt)


_listers: dict[tuple, tuple] = {}  # (api, JACK server) -> (MidiIn, MidiOut, server id) kept for listing
_listers_lock = threading.Lock()


def list_ports(api: str | int = "auto") -> tuple[list[str], list[str]]:
    """(inputs, outputs): ports we can listen to, and ports we can play to.

    One pair of listing clients per API (and JACK server) is kept open for the process:
    opening and closing JACK clients on every call stalls a busy server (measured: a
    2-second port refresh held MIDI clock back, and churn under load hung client opens)."""
    api = resolve_api(api)
    key = (api, os.environ.get("JACK_DEFAULT_SERVER"))
    with _listers_lock:
        for attempt in range(2):  # a stale client (its server restarted) is replaced once
            pair = _listers.get(key)
            sid = jack_server_id() if api == rtmidi.API_UNIX_JACK else None
            if pair is not None and pair[2] != sid:  # its server died (and may be back): a dead client lists lies
                for rt in pair[:2]:
                    abandon(rt)
                del _listers[key]
                pair = None
            if pair is None:
                pair = _listers[key] = (*(_rtmidi(cls, api, f"{CLIENT_NAME} ports") for cls in (rtmidi.MidiIn, rtmidi.MidiOut)), sid)
            try:
                return list(pair[0].get_ports()), list(pair[1].get_ports())
            except (rtmidi.RtMidiError, RuntimeError, SystemError) as e:
                del _listers[key]
                if attempt:
                    raise MuseBridgeError(f"cannot list MIDI ports ({e}); is the MIDI system running?") from None
    raise AssertionError("unreachable")


# (client, port) names of the ports this process opened: virtual ports, the local ends of
# connections by name ("MuseBridge:MuseBridge Out" while connected to a synth), reset ports
_own_ports: set[tuple[str, str]] = set()


def is_own_port(port: str) -> bool:
    """True for a port this process opened ("MuseBridge:MuseBridge Out", also as
    "MuseBridge-01:..." when JACK renamed a second client of that name)."""
    client, _, name = port.partition(":")
    base = client.rsplit("-", 1)[0] if client.rsplit("-", 1)[-1].isdigit() else client
    return (client, name) in _own_ports or (base, name) in _own_ports


def find_port(available: Sequence[str], wanted: str, kind: str) -> int:
    """Index of `wanted` in `available`: exact, else a unique case-insensitive substring.

    The error for a name that matches nothing offers only other programs' ports: this
    process's own virtual ports are left out (the jam opens its output before its input,
    so `--in Nope` would otherwise suggest connecting the jam to itself)."""
    if wanted in available:
        return list(available).index(wanted)
    low = wanted.lower()
    hits = [i for i, p in enumerate(available) if low in p.lower()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        names = ", ".join(available[i] for i in hits)
        raise MuseBridgeError(f"MIDI {kind} port {wanted!r} is ambiguous: it matches {names}; give more of the name")
    listed = ", ".join(p for p in available if not is_own_port(p)) or "none"
    raise MuseBridgeError(f"no MIDI {kind} port {wanted!r}; available: {listed} (run `musebridge ports`)")


# --- ports ---------------------------------------------------------------------------------------


class _Port:
    """What inputs and outputs share: open virtual or by name, close once, reconnect."""

    kind = "?"
    _rt_class: type = object
    _default_name = ""

    def __init__(self, port: str | None, virtual: bool | None, api: str | int, client_name: str):
        self.api = resolve_api(api)
        self.virtual = port is None if virtual is None else virtual
        self.wanted = port  # what the user asked to connect to (None for a virtual port)
        self.local_name = (port or self._default_name) if self.virtual else self._default_name
        self.name = self.local_name  # virtual: our port's name; connected: the peer's full name
        self._lost = False
        self._lock = threading.Lock()
        if self.virtual and self.api == rtmidi.API_WINDOWS_MM:
            raise MuseBridgeError("virtual MIDI ports do not exist on Windows: install loopMIDI, create a port "
                                  f"there, and pass its name (e.g. --{'in' if self.kind == 'input' else 'out'} "
                                  "'loopMIDI Port')")
        self.client_name = client_name
        self._rt = _rtmidi(self._rt_class, self.api, client_name)
        self.server_id = jack_server_id() if self.api == rtmidi.API_UNIX_JACK else None
        try:
            self._configure()
            if self.virtual:
                self._rt.open_virtual_port(self.local_name)
            else:
                self._open_by_name()
            _own_ports.add((client_name, self.local_name))
        except BaseException:
            rt, self._rt = self._rt, None
            rt.delete()
            raise

    def server_lost(self) -> bool:
        """True once the JACK server this port's client lives on has gone (killed, stopped,
        or restarted since): nothing sent arrives, nothing arrives. Other APIs: False."""
        return self.server_id is not None and jack_server_id() != self.server_id

    def abandon_client(self) -> None:
        """The server died: drop the dead client without closing it (`abandon`). The port
        stays unusable (sends raise) until `reopen`."""
        with self._lock:
            rt, self._rt = self._rt, None
        self._client_gone()
        if rt is not None:
            abandon(rt)

    def _client_gone(self) -> None:
        """Called after the client was dropped (inputs: stop polling it)."""

    def reopen(self) -> bool:
        """After the JACK server came back: a new client and port, as first opened (the
        virtual port again, or the peer by name). False while no server answers; a named
        peer that is not back yet leaves the port lost for `reconnect` to retry."""
        if self.api != rtmidi.API_UNIX_JACK or jack_server_id() is None:
            return False
        if self._rt is not None:
            self.abandon_client()
        try:
            rt = _rtmidi(self._rt_class, self.api, self.client_name)
        except MuseBridgeError:
            return False
        with self._lock:
            self._rt = rt
            self.server_id = jack_server_id()
            self._configure()
            if self.virtual:
                rt.open_virtual_port(self.local_name)
            else:
                try:
                    self._open_by_name()
                except MuseBridgeError:
                    self._lost = True
        self._client_back()
        return True

    def _client_back(self) -> None:
        """Called once `reopen` made a new client (inputs: poll it)."""

    def _configure(self) -> None:
        """Set up the rtmidi object before its port opens (inputs: callback, filters)."""

    def _open_by_name(self) -> None:
        assert self.wanted is not None
        for attempt in range(3):  # the list can change between listing and opening by index
            ports = self._rt.get_ports()
            i = find_port(ports, self.wanted, self.kind)
            try:
                self._rt.open_port(i, self.local_name)
                break
            except rtmidi.InvalidPortError:
                if attempt == 2:
                    raise MuseBridgeError(f"MIDI {self.kind} port {ports[i]!r} vanished while connecting; "
                                          "try again") from None
        self.name = ports[i]
        self._lost = False
        if self.api == rtmidi.API_UNIX_JACK:
            time.sleep(JACK_SETTLE_S)  # JACK applies a new connection from a later cycle: sent before, lost

    @property
    def closed(self) -> bool:
        return self._rt is None

    def connected(self) -> bool:
        """Open, and (for a port opened by name) the peer has been there at every check
        since it was opened. A peer that vanished and came back between two checks is
        not noticed (rtmidi cannot tell): call this regularly, e.g. every 0.5 s."""
        rt = self._rt
        if rt is None or not rt.is_port_open():
            return False
        if self.virtual:
            return True
        if self._lost:
            return False
        if self.name not in rt.get_ports():
            self._lost = True
        return not self._lost

    def reconnect(self) -> bool:
        """Find the port by the name first asked for and connect again (after the peer
        vanished and came back). False if it is not there (yet); virtual ports: open?"""
        if self._rt is None:
            raise MuseBridgeError(f"MIDI {self.kind} port {self.name!r} is closed; open a new one")
        if self.virtual:
            return self._rt.is_port_open()
        with self._lock:
            try:
                find_port(self._rt.get_ports(), self.wanted, self.kind)
            except MuseBridgeError:
                return False
            self._rt.close_port()
            try:
                self._open_by_name()
            except MuseBridgeError:  # gone again meanwhile: closed until the next try
                return False
            return True

    def close(self) -> None:
        """Close the port and free the client; safe to call twice. A client whose JACK
        server died is abandoned instead (closing it can segfault)."""
        if self._rt is not None and self.server_lost():
            self.abandon_client()
        with self._lock:
            rt, self._rt = self._rt, None
        if rt is not None:
            try:
                rt.close_port()
            finally:
                rt.delete()  # frees the JACK/ALSA client now, not at garbage collection

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        how = "virtual" if self.virtual else "connected to"
        state = "closed" if self._rt is None else api_name(self.api)
        return f"{type(self).__name__}({how} {self.name!r}, {state})"


class ArrivalClock:
    """perf_counter times for incoming messages from the driver's own delta times.

    rtmidi stamps each message with the time since the previous one, taken by the MIDI
    driver (JACK: its process cycle; ALSA: the sequencer queue; CoreMIDI: the packet). A
    polling thread that wakes late on a busy machine would otherwise date a message late
    by as much as it slept. The deltas are summed into the driver's timeline, which is
    tied to perf_counter by the least-delayed poll seen (the smallest poll - driver
    offset). That offset creeps up by `CREEP` seconds a second, faster than any clock
    slew, so driver clock drift and a driver that reports no deltas at all fall back to
    the poll time; a stamp is never later than the poll, nor more than `MAX_AGE` earlier.
    """

    CREEP = 0.001
    MAX_AGE = 0.02

    def __init__(self) -> None:
        self.driver = 0.0  # seconds on the driver's timeline since the first message
        self.offset: float | None = None  # perf_counter - driver time, least delay seen
        self._last = 0.0

    def stamp(self, delta: float, now: float) -> float:
        if math.isfinite(delta) and delta > 0:  # a driver without stamps gives 0 (or nothing usable)
            self.driver += delta
        lag = now - self.driver
        if self.offset is None:
            self.offset = lag
        else:
            self.offset = min(lag, self.offset + self.CREEP * max(now - self._last, 0.0))
        self._last = now
        t = self.driver + self.offset
        if now - t > self.MAX_AGE:  # the driver's times went astray: trust the poll
            self.offset, t = lag, now
        return t


# rtmidi's input ring buffer, in messages: rtmidi's default (1,024) overflowed under a
# 2,000 notes/s flood while the model held the GIL (814-4,214 of them lost); this holds
# 30 s of such a flood with our polling thread stalled.
QUEUE_SIZE = 65536
POLL_S = 0.0005  # the polling thread's sleep when rtmidi has nothing
UNSTICK_S = 0.005  # nothing from the driver this long: send RESET_SYSEX (see _SysexReset)


def _midi_in(api: int, name: str) -> rtmidi.MidiIn:
    return rtmidi.MidiIn(api, name=name, queue_size_limit=QUEUE_SIZE)


class _SysexReset:
    """A client of ours whose one port plays into our own input, to end a sysex the
    driver holds open.

    RtMidi's JACK input appends every event after a sysex that lacks its 0xF7 to that
    sysex and hands over nothing until an event ends in 0xF7 (measured: `F0 01`, then
    notes, CC, clock and Start: nothing arrived; `jack_midi_dump` shows them as separate
    events). No parser can take apart what it is never given. So when the input has
    been quiet for `UNSTICK_S`, `send` plays RESET_SYSEX into it: what was held comes out
    glued to the marker (`MidiParser` separates it and skips the marker), and an idle
    input just gets the marker back. JACK only, where this was measured.

    Our input port is found by renaming it to a unique name for a moment (JACK keeps
    connections through a rename): its client name is JACK's to choose ("name-01")."""

    def __init__(self, client_name: str):
        self.client_name = f"{client_name} reset"
        self._out = _rtmidi(rtmidi.MidiOut, rtmidi.API_UNIX_JACK, self.client_name)

    def attach(self, rt_in: rtmidi.MidiIn, local_name: str) -> None:
        """Connect to `rt_in`'s port (again, after it was reopened)."""
        unique = f"{local_name} {os.getpid()}.{id(self):x}"
        if self._out.is_port_open():
            self._out.close_port()
        rt_in.set_port_name(unique)
        try:
            ports = self._out.get_ports()
            i = next(i for i, p in enumerate(ports) if p.endswith(":" + unique))
            self._out.open_port(i, f"{local_name} reset")
            _own_ports.add((self.client_name, f"{local_name} reset"))
        finally:
            rt_in.set_port_name(local_name)

    def send(self) -> None:
        self._out.send_message(RESET_SYSEX)

    def close(self) -> None:
        try:
            self._out.close_port()
        finally:
            self._out.delete()


class MidiInput(_Port):
    """A MIDI input: messages arrive as (bytes, perf_counter time), one complete message each.

    Messages are polled by a thread of ours, not delivered by an rtmidi callback: a
    Python callback runs on JACK's process thread and needs the GIL, and with a
    synchronous server (`jackd -S`) that deadlocked whenever this process opened or
    closed another JACK client while holding the GIL (seen: CI hung in client open/close).
    Each wake drains everything rtmidi holds; when it holds nothing the thread sleeps
    `POLL_S`. With `callback`, it is called as `callback(msg, t)` on the polling thread
    (return quickly); otherwise messages queue up for `receive`, `poll` and
    `iter_pending`. Times come from the driver's stamps (`ArrivalClock`), not from when
    the poll woke.

    What the driver hands over is read as a byte stream (`MidiParser`), because drivers
    glue and split messages: whatever garbage came before, the next valid message is
    heard. Sysex, torn messages and stray bytes are dropped and counted in `dropped`;
    clock and transport come through; active sensing is ignored. rtmidi's queue holds
    `QUEUE_SIZE` messages; a drain that finds it full counts `dropped.overflow` (rtmidi
    itself only prints "message queue limit reached" on stderr: it reports overflow
    through no callback, so how many were lost is not known). On JACK a `_SysexReset`
    client ends a sysex the driver holds open. (rtmidi filters nothing itself: a message
    it skipped would leave a gap in the driver's delta times.)
    """

    kind = "input"
    _rt_class = staticmethod(_midi_in)
    _default_name = DEFAULT_IN

    def __init__(self, port: str | None = None, *, virtual: bool | None = None, api: str | int = "auto",
                 callback: Callback | None = None, client_name: str = CLIENT_NAME,
                 dropped: DropCounters | None = None):
        self.callback = callback
        self.dropped = dropped if dropped is not None else DropCounters()  # a caller's own outlives the port
        self.callback_errors = 0
        self.last_error: str | None = None
        self._parser = MidiParser(self.dropped)
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._arrivals = ArrivalClock()
        self._polling = threading.Event()
        self._reset: _SysexReset | None = None
        self._client_name = client_name
        super().__init__(port, virtual, api, client_name)
        if self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        self._polling.set()
        self._poller = threading.Thread(target=self._poll_loop, name=f"midi-in {self.name}", daemon=True)
        self._poller.start()

    def _configure(self) -> None:
        self._rt.ignore_types(sysex=False, timing=False, active_sense=False)

    def _client_gone(self) -> None:
        """The poller ends by itself (it finds no client); its reset client died too."""
        poller = getattr(self, "_poller", None)
        if poller is not None and poller.is_alive() and poller is not threading.current_thread():
            poller.join(timeout=1.0)
        reset, self._reset = self._reset, None
        if reset is not None:
            abandon(reset._out)

    def _client_back(self) -> None:
        if self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        self._poller = threading.Thread(target=self._poll_loop, name=f"midi-in {self.name}", daemon=True)
        self._poller.start()

    def _attach_reset(self) -> None:
        """Open (or reconnect) the sysex reset client; without it the input still works,
        it just stays deaf after a torn sysex until the peer sends an 0xF7."""
        try:
            if self._reset is None:
                self._reset = _SysexReset(self._client_name)
            self._reset.attach(self._rt, self.local_name)
        except Exception as e:  # StopIteration, RtMidiError, MuseBridgeError: never fail the input
            self.last_error = f"sysex reset port: {type(e).__name__}: {e}"
            if self._reset is not None:
                self._reset.close()
            self._reset = None

    def reconnect(self) -> bool:
        """As for any port; the sysex reset client follows the reopened port."""
        ok = super().reconnect()
        if ok and not self.virtual and self.api == rtmidi.API_UNIX_JACK:
            self._attach_reset()
        return ok

    def _poll_loop(self) -> None:
        quiet_since = time.perf_counter()
        while self._polling.is_set():
            rt = self._rt
            if rt is None:
                return
            try:
                n = self._drain(rt)
                now = time.perf_counter()
                if n:
                    quiet_since = now
                elif now - quiet_since >= UNSTICK_S and self._reset is not None:
                    self._reset.send()
                    quiet_since = now
                else:
                    time.sleep(POLL_S)
            except Exception:
                return

    def _drain(self, rt: rtmidi.MidiIn) -> int:
        """Hand on everything rtmidi holds now; how many driver events that was."""
        n = 0
        while self._polling.is_set() and (event := rt.get_message()) is not None:
            self._on_message(event)
            n += 1
            if n % (QUEUE_SIZE - 1) == 0:  # a full ring's worth in one go: it filled up, maybe lost some
                self.dropped.overflow += 1
        return n

    def close(self) -> None:
        """Stop polling, then close the port and free the clients; safe to call twice."""
        self._polling.clear()
        poller = getattr(self, "_poller", None)
        if poller is not None and poller.is_alive() and poller is not threading.current_thread():
            poller.join(timeout=1.0)
        reset, self._reset = getattr(self, "_reset", None), None
        try:
            super().close()
        finally:
            if reset is not None:
                reset.close()

    def _on_message(self, event: tuple[list[int], float]) -> None:
        t = self._arrivals.stamp(event[1], time.perf_counter())  # first thing, for every driver event
        for msg in self._parser.feed(event[0]):
            if msg == b"\xfe":
                continue  # active sensing: a keep-alive, not music
            cb = self.callback
            if cb is None:
                self._queue.put((msg, t))
                continue
            try:
                cb(msg, t)
            except Exception as e:  # an exception must not unwind into the polling thread
                self.callback_errors += 1
                self.last_error = f"{type(e).__name__}: {e}"

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (forever if None); None on timeout."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def poll(self) -> Message | None:
        """The next message if one is waiting, else None."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def iter_pending(self) -> Iterator[Message]:
        """Every message waiting now."""
        while (m := self.poll()) is not None:
            yield m


class MidiOutput(_Port):
    """A MIDI output. `send` is thread-safe; note messages sent are remembered for
    `echo_of` (our own notes coming back through a loopback within `echo_window_s`)."""

    kind = "output"
    _rt_class = rtmidi.MidiOut
    _default_name = DEFAULT_OUT

    def __init__(self, port: str | None = None, *, virtual: bool | None = None, api: str | int = "auto",
                 client_name: str = CLIENT_NAME, echo_window_s: float = 0.05):
        self.echo = EchoGuard(echo_window_s)
        self.sent = 0
        super().__init__(port, virtual, api, client_name)

    def send(self, msg: bytes | bytearray | Sequence[int]) -> None:
        """Send one complete MIDI message."""
        with self._lock:
            rt = self._rt
            if rt is None:
                raise MuseBridgeError(f"MIDI output {self.name!r} is closed")
            rt.send_message(msg)
            self.sent += 1
        self.echo.sent(bytes(msg))

    def echo_of(self, msg: bytes, t: float | None = None) -> bool:
        """True if `msg` is one of our own notes coming back (each sent note excuses one)."""
        return self.echo.is_echo(msg, t)
