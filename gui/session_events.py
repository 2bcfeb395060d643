"""What the main window does with what the session and its host report (on the GUI thread).

A part of `MainWindow` (a mixin). The host's `event` signal carries the session's event
records; `busy` and `failed` carry its starting and stopping. Each only updates what is shown.
"""

from __future__ import annotations


class SessionEventsMixin:
    """The handlers of the host's `event`, `busy` and `failed` signals."""

    # --- events from the session (GUI thread) -----------------------------------------------------
    def _on_event(self, rec: dict) -> None:
        ev = rec.get("event")
        if ev == "ready":
            self.backend = rec.get("backend") or self.backend
            self.error = ""
        elif ev == "error":
            self.show_error(rec.get("message", "error"))
            self._live_region = None
        elif ev == "phrase_end":
            bpb = self.session.cfg.beats_per_bar
            start = float(rec.get("start_beat", 0.0))
            self._live_region = (start, start + float(rec.get("bars", 0)) * bpb, "playing")
        elif ev == "answer_end":
            self._live_region = None
            self.sync_history()
        elif ev in ("panic", "stopped", "transport"):  # no answer plays on now
            self._live_region = None
            if ev == "transport":
                self.statusBar().showMessage(f"DAW transport: {rec.get('status')}", 3000)
            elif ev == "stopped":
                self._frozen_playhead = self._playhead_now
        elif ev == "mode":
            self._show_mode(rec.get("mode", self.session.mode))
        elif ev == "control":
            self._control_from_cc(rec.get("control", ""), rec.get("value"))
        elif ev == "midi_learn":
            self._show_ccs()
            self.statusBar().showMessage(f"learned: CC {rec.get('cc')} → {rec.get('control')}", 5000)
        self._show_running()
        self._status()

    def _control_from_cc(self, control: str, value) -> None:
        if control.startswith("strength:"):
            strip = self.mixer.strips.get(control.split(":", 1)[1])
            if strip is not None:
                strip.set_strength(float(value))
        elif control in self.follow.faders:
            self.follow.faders[control].set_value(float(value))
        elif control == "temperature":
            self.temp[1].blockSignals(True)
            self.temp[1].setValue(round(float(value) * 100))
            self.temp[2].setText(f"{float(value):.2f}")
            self.temp[1].blockSignals(False)
        elif control == "top_p":
            self.top_p[1].blockSignals(True)
            self.top_p[1].setValue(round(float(value) * 100))
            self.top_p[2].setText(f"{float(value):.2f}")
            self.top_p[1].blockSignals(False)

    def _on_busy(self, state: str) -> None:
        self._show_running()
        if not state and self.host.running:
            self.error = "" if not self.error.startswith("start") else self.error

    def _on_failed(self, msg: str) -> None:
        self.show_error(f"could not start: {msg}")
        self._show_running()
