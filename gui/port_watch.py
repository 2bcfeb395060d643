"""Port lists for the pickers, refreshed every few seconds without disturbing the jam.

`ports.list_ports` opens (and closes) a MIDI client per call. That is right for a one-off
listing, but every 2 s it hurts: on JACK each client that comes and goes reorders the
graph, and with the synchronous server the bridge needs, that stalled every client --
the jam's own input included (measured: MIDI clock reaching the session 20x late while
the window refreshed). So the window keeps one listing client per MIDI API open and
only asks it for names; `auto` is resolved once, not on every refresh.
"""

from __future__ import annotations

import threading

import rtmidi

from musebridge.bridge.midi_system import CLIENT_NAME, resolve_api
from musebridge.bridge.ports import list_ports


class PortWatcher:
    """Callable like `list_ports(api)`; reuses its clients until the API changes or fails."""

    def __init__(self):
        self._name: str | None = None
        self._api: int | None = None
        self._in = self._out = None
        self._lock = threading.Lock()

    def __call__(self, api: str) -> tuple[list[str], list[str]]:
        with self._lock:
            if api != self._name or self._in is None:
                self._close()
                resolved = resolve_api(api)
                try:
                    self._in = rtmidi.MidiIn(resolved, name=f"{CLIENT_NAME} ports")
                    self._out = rtmidi.MidiOut(resolved, name=f"{CLIENT_NAME} ports")
                except rtmidi.RtMidiError:
                    self._close()
                    return list_ports(resolved)  # raises the ports module's one-line error
                self._name, self._api = api, resolved
            try:
                ins, outs = list(self._in.get_ports()), list(self._out.get_ports())
            except Exception:
                self._close()  # start over next time
                raise
            if not ins and not outs:
                self._close()  # nothing at all: perhaps the JACK server went away; reconnect next time
            return ins, outs

    def _close(self) -> None:
        for rt in (self._in, self._out):
            if rt is not None:
                try:
                    rt.delete()
                except Exception:
                    pass
        self._in = self._out = None
        self._name = self._api = None

    def close(self) -> None:
        with self._lock:
            self._close()
