"""The Latency panel of the main window: the meter and the figures it shows.

A part of `MainWindow` (a mixin: `meter` and `meter_numbers` live on the window object). The
figures are read from what the session records -- its latencies, throughput and the
scheduler's jitter -- and never computed here.
"""

from __future__ import annotations

from PyQt6.QtWidgets import QGroupBox, QVBoxLayout

from .meter import LatencyMeter


class LatencyPanelMixin:
    """The Latency group box (`meter`) and the numbers the frame tick hands it."""

    def _latency_box(self) -> QGroupBox:
        lat = QGroupBox("Latency")
        ll = QVBoxLayout(lat)
        self.meter = LatencyMeter()
        ll.addWidget(self.meter)
        return lat

    def _meter_dirty(self) -> bool:
        n = len(self.session.latencies["first_token_ms"]) + len(getattr(self.session, "throughput", {}).get("tokens_per_s", ()))
        dirty = n != getattr(self, "_meter_n", -1)
        self._meter_n = n
        return dirty

    def meter_numbers(self) -> dict:
        s = self.session
        tp = getattr(s, "throughput", {})
        jit = None
        if s.scheduler is not None:
            try:
                jit = s.scheduler.jitter_stats().get("p99_ms")
            except Exception:
                jit = None
        return {"phrase_to_note_ms": list(s.latencies["phrase_to_note_ms"]),
                "first_token_ms": list(s.latencies["first_token_ms"]),
                "tokens_per_s": list(tp.get("tokens_per_s", ())), "realtime_x": list(tp.get("realtime_x", ())),
                "backend": self.backend, "jitter_p99_ms": jit}
