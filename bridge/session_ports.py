"""The jam's two MIDI ports, watched: opened and closed in one place, a peer that vanished
retried, a JACK server that died (and returned) noticed, what the input threw away counted.

`SessionPorts.check()` (called by the session's worker when `due`, every half second) says
what changed as `PortEvent`s, each with the event the session reports; the session silences
what sounded. Nothing here knows the music: data flows from the ports to the session.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

from .safety import DropCounters, EchoGuard

CHECK_S = 0.5  # how often the ports are checked, and drops reported


_EVENTS = {"lost": "port", "connected": "port", "server_lost": "port_lost", "server_back": "port_restored"}


@dataclass(frozen=True)
class PortEvent:
    """What a check found: a port by name (`role`) `lost` or `connected` again, or the JACK
    server under both ports gone (`server_lost`) or back (`server_back`); `fields` are what
    the session's event (`event`) carries."""

    kind: str  # "lost" | "connected" | "server_lost" | "server_back"
    role: str | None  # lost/connected: "output" | "input"
    fields: dict

    @property
    def event(self) -> str:
        return _EVENTS[self.kind]


class _Every:
    """True at most once per `seconds` (monotonic time)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._next = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class SessionPorts:
    """The session's input and output: `open`, `send`, `check` when `due`, `close`."""

    def __init__(self) -> None:
        self.inp = self.out = None
        self.lost: set[str] = set()  # roles of the ports lost, retried at every check
        self.server_lost = False  # the JACK server died under the ports and has not returned (yet)
        # what the input threw away (garbage, sysex, rtmidi's queue overflowing): one object
        # for the session, so the counts outlive a reopened input port
        self.dropped = DropCounters()
        # what the output sent, to spot it coming back through a loopback: the session's, so a
        # reopened output keeps what it learnt (a proven loop), and the input asks it, not the port
        self.echo = EchoGuard()
        self.programs: list[bytes] = []  # program changes played to the output whenever it (re)opens
        self.due = _Every(CHECK_S)
        self._report_due = _Every(CHECK_S)
        self._reported = 0

    def open(self, cfg, on_midi: Callable[[bytes, float], None]) -> EchoGuard:
        """Open `cfg`'s output, then its input (calling `on_midi(msg, t)` from its polling
        thread); returns the guard that knows what the output sent, to spot it coming back."""
        from .midi_input import MidiInput
        from .ports import MidiOutput

        self.out = MidiOutput(cfg.out_port, api=cfg.api, echo=self.echo)
        self.inp = MidiInput(cfg.in_port, api=cfg.api, callback=on_midi, dropped=self.dropped)
        return self.echo

    def send(self, msg: bytes) -> None:
        """Play one message to the output (nowhere without one)."""
        out = self.out
        if out is not None:
            out.send(msg)

    def send_programs(self) -> None:
        if self.out is None:
            return
        for msg in self.programs:
            try:
                self.out.send(msg)
            except Exception:
                return

    def names(self) -> dict[str, str | None]:
        return {"input": getattr(self.inp, "name", None), "output": getattr(self.out, "name", None)}

    def close(self) -> None:
        for port in (self.inp, self.out):
            if port is not None:
                with contextlib.suppress(Exception):  # a port that will not close is let go all the same
                    port.close()
        self.inp = self.out = None

    # --- watching ---------------------------------------------------------------------------------
    def check(self) -> list[PortEvent]:
        """Is each port still there? A lost one is retried until it returns; when the server
        died, nothing else is tried until it is back."""
        ports = [(role, p) for role, p in (("output", self.out), ("input", self.inp)) if p is not None]
        events = self._check_server(ports)
        if self.server_lost:
            return events
        for role, port in ports:
            if port.virtual:
                continue
            if role in self.lost:
                try:
                    back = port.reconnect()
                except Exception:
                    back = False
                if back:
                    self.lost.discard(role)
                    events.append(PortEvent("connected", role, {"role": role, "name": port.name,
                                                                 "state": "connected"}))
                    if role == "output":
                        self.send_programs()
            elif not port.connected():
                self.lost.add(role)
                why = f"MIDI {role} {port.name!r} vanished; retrying every 0.5 s"
                events.append(PortEvent("lost", role, {"role": role, "name": port.name, "state": "lost",
                                                       "message": why}))
        return events

    def _check_server(self, ports: list) -> list[PortEvent]:
        """The JACK server under the ports died (or restarted): drop their clients; once it
        answers again re-create the ports, virtual or by name."""
        roles = [role for role, _ in ports]
        if not self.server_lost:
            if not any(p.server_lost() for _, p in ports):
                return []
            self.server_lost = True
            for _, p in ports:
                p.abandon_client()
            self.lost.update(roles)
            return [PortEvent("server_lost", None, {"ports": roles})]
        if not all(p.reopen() for _, p in ports if p.closed or p.server_lost()):
            return []
        self.server_lost = False
        self.lost = {role for role, p in ports if not p.virtual and not p.connected()}
        self.send_programs()
        # `waiting`: ports by name whose peer is not back yet (a `port` event says when it is)
        waiting = sorted(self.lost)
        return [PortEvent("server_back", None, {"ports": roles, **self.names(), "waiting": waiting})]

    def dropped_news(self) -> dict | None:
        """At most every half second: the input's drop counts, when it lost more since."""
        if not self._report_due():
            return None
        total = self.dropped.total
        if total == self._reported:
            return None
        self._reported = total
        return {"total": total, **self.dropped.as_dict()}
