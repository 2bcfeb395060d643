"""The GUI's hold on the jam session: start/stop off the GUI thread, events onto it.

`JamSession` calls its listeners from its own threads (MIDI input, engine worker,
scheduler); `SessionHost` re-emits each record as a Qt signal, which Qt queues onto the
GUI thread. Starting (model load, ports) and stopping (joins threads, releases notes)
run in a short-lived thread, so the window never freezes on a slow model or a port.
Everything musical stays in the session: the host only forwards.
"""

from __future__ import annotations

import threading

from PyQt6.QtCore import QObject, pyqtSignal

from musebridge.bridge.cc_map import CCMap
from musebridge.bridge.config import JamConfig
from musebridge.errors import MuseBridgeError

# settings the session reads once, at start: changing one while running restarts the jam
RESTART_KEYS = {"in_port", "out_port", "api", "style", "model", "backend", "clock", "beats_per_bar", "program_changes"}


def plain(e: BaseException) -> str:
    """An exception as one line a musician can act on."""
    if isinstance(e, MuseBridgeError):
        return str(e)
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class SessionHost(QObject):
    event = pyqtSignal(dict)  # a session listener record, on the GUI thread
    busy = pyqtSignal(str)  # "starting" | "stopping" | "" (idle)
    failed = pyqtSignal(str)  # start failed: why, in plain words

    def __init__(self, config: JamConfig, runtime=None, ports: bool = True, ccmap: CCMap | None = None, parent=None):
        super().__init__(parent)
        from musebridge.bridge.session import JamSession

        self.session = JamSession(config, runtime=runtime, listener=self.event.emit, ports=ports, ccmap=ccmap)
        self.backend_name: str | None = getattr(runtime, "name", None)
        self._thread: threading.Thread | None = None
        self.state = ""  # what the host is doing: "" | starting | stopping

    @property
    def running(self) -> bool:
        return self.session.state != "stopped"

    @property
    def idle(self) -> bool:
        return self.state == ""

    # --- lifecycle, off the GUI thread ----------------------------------------------------
    def _spawn(self, state: str, fn) -> bool:
        if self.state:
            return False
        self.state = state
        self.busy.emit(state)

        def run():
            try:
                fn()
            finally:
                self.state = ""
                self.busy.emit("")

        self._thread = threading.Thread(target=run, name=f"musebridge-gui-{state}", daemon=True)
        self._thread.start()
        return True

    def start(self) -> bool:
        def go():
            try:
                self.session.start()
            except Exception as e:  # a port, a model, a backend: say it, release what opened
                try:
                    self.session.stop()
                except Exception:
                    pass
                self.failed.emit(plain(e))

        return self._spawn("starting", go)

    def stop(self) -> bool:
        return self._spawn("stopping", self.session.stop)

    def restart(self, **changes) -> bool:
        def go():
            self.session.stop()
            self.session.set_config(**changes)
            try:
                self.session.start()
            except Exception as e:
                try:
                    self.session.stop()
                except Exception:
                    pass
                self.failed.emit(plain(e))

        return self._spawn("restarting", go)

    def wait(self, timeout: float = 10.0) -> None:
        """Block until a start/stop in flight is done (closing the window, tests)."""
        t = self._thread
        if t is not None and t.is_alive():
            t.join(timeout)

    def shutdown(self) -> None:
        """Closing the app: wait for whatever runs, then stop (every note released)."""
        self.wait()
        self.session.stop()

    # --- settings --------------------------------------------------------------------------
    def configure(self, **changes) -> str:
        """Apply settings: at once when the session reads them live, else by restarting a
        running jam. Returns "live", "restart" or "saved" (stopped: used at the next start)."""
        if not changes:
            return "live"
        if self.running and RESTART_KEYS & changes.keys():
            if self.restart(**changes):
                return "restart"
            self.session.set_config(**changes)  # busy: the start in flight will not see it
            return "saved"
        self.session.set_config(**changes)
        return "live" if self.running else "saved"
