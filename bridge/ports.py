"""MIDI ports by name, mido-style, over python-rtmidi: naming, listing, opening, reconnecting.

`MidiInput()` / `MidiOutput()` open a *virtual* port others connect to ("MuseBridge In" /
"MuseBridge Out" of client "MuseBridge"); `MidiInput("Keystation")` *connects* to an
existing port, matched exactly, else by case-insensitive substring (`find_port`). Messages
are plain `bytes`, one complete message each. What ports share -- opening virtual or by
name, watching the peer, reconnecting, a JACK server that dies and returns -- is `_Port`
here, with `MidiOutput`; the input's polling thread, its byte-stream parsing and its arrival
times are in `midi_input.py`; which MIDI system and how clients open, `midi_system.py`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Sequence

import rtmidi

from musebridge.errors import MuseBridgeError

from .midi_system import (CLIENT_NAME, JACK_SETTLE_S, abandon, api_name, jack_server_id, open_client,
                          resolve_api)
from .safety import EchoGuard

DEFAULT_IN = "MuseBridge In"
DEFAULT_OUT = "MuseBridge Out"


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
                pair = _listers[key] = (*(open_client(cls, api, f"{CLIENT_NAME} ports") for cls in (rtmidi.MidiIn, rtmidi.MidiOut)), sid)
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
        self._rt = open_client(self._rt_class, self.api, client_name)
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
            rt = open_client(self._rt_class, self.api, self.client_name)
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
        """Set up the rtmidi object before its port opens (inputs: which message types pass)."""

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


class MidiOutput(_Port):
    """A MIDI output. `send` is thread-safe; each message sent is told to `echo`, the
    session's guard (when it has one), so the input can spot our own notes coming back
    through a loopback. The guard belongs to the session, not the port: a reopened output
    keeps what it learnt about the loop."""

    kind = "output"
    _rt_class = rtmidi.MidiOut
    _default_name = DEFAULT_OUT

    def __init__(self, port: str | None = None, *, virtual: bool | None = None, api: str | int = "auto",
                 client_name: str = CLIENT_NAME, echo: EchoGuard | None = None):
        self.echo = echo
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
        if self.echo is not None:
            self.echo.sent(bytes(msg))
