"""The Latency panel of the main window: the meter and the figures it shows.

A part of `MainWindow` (a mixin: `meter` and `meter_numbers` live on the window object). The
figures are read from what the session records -- its record's latencies and throughput
(`bridge/jam_record.py`) and the scheduler's jitter -- and never computed here.
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
        n = self.session.record.figures_seen()
        dirty = n != getattr(self, "_meter_n", -1)
        self._meter_n = n
        return dirty

    def meter_numbers(self) -> dict:
        s = self.session
        rec = s.record
        jit = s.health().send_jitter_p99_ms
        return {"phrase_to_note_ms": list(rec.phrase_to_note_ms), "first_token_ms": list(rec.first_token_ms),
                "tokens_per_s": list(rec.tokens_per_s), "realtime_x": list(rec.realtime_x),
                "backend": self.backend, "jitter_p99_ms": jit}
