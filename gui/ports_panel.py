"""The MIDI panel of the main window: the MIDI system, the ports and what the player plays.

A part of `MainWindow` (a mixin: its widgets and handlers live on the window object, where the
tests reach them). Ports are listed in a thread by the window's `port_lister`; the answer comes
back through the window's `ports_listed` signal. A choice goes to the session through the
window's `_set_config`; the panel only shows what the session's config holds.
"""

from __future__ import annotations

import threading

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QComboBox, QFormLayout, QGroupBox

from musebridge.bridge.midi_system import API_CHOICES
from musebridge.engine.music.families import FAMILIES

from . import theme
from .host import plain

VIRTUAL_IN, VIRTUAL_OUT = "MuseBridge In (virtual)", "MuseBridge Out (virtual)"


def _own(name: str) -> bool:
    """Our own virtual ports show in the lists too: never offer MuseBridge to itself."""
    return "musebridge" in name.lower()


def _match(name: str, ports: list[str]) -> str | None:
    """The port `name` opens, matched as the ports module does: exactly, else a unique
    case-insensitive part of one name."""
    if name in ports:
        return name
    hits = [p for p in ports if name.lower() in p.lower()]
    return hits[0] if len(hits) == 1 else None


class PortsPanelMixin:
    """The MIDI group box and the port list behind it (`api_box`, `in_box`, `out_box`, `family_box`)."""

    def _midi_box(self) -> QGroupBox:
        midi = QGroupBox("MIDI")
        f = QFormLayout(midi)
        f.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.api_box = QComboBox()
        self.api_box.addItems(API_CHOICES)
        self.api_box.setToolTip("The MIDI system (auto: the platform's own; JACK where there is no ALSA sequencer)")
        self.api_box.currentTextChanged.connect(self._api_changed)
        self.in_box = QComboBox()
        self.in_box.setToolTip("Where your playing comes from (your controller, or the DAW's MIDI out)")
        self.in_box.activated.connect(lambda _: self._port_chosen("in_port", self.in_box))
        self.out_box = QComboBox()
        self.out_box.setToolTip("Where the model's notes go (a DAW track's MIDI input, or a synth)")
        self.out_box.activated.connect(lambda _: self._port_chosen("out_port", self.out_box))
        self.family_box = QComboBox()
        for fam in FAMILIES:
            self.family_box.addItem(theme.FAMILY_LABELS[fam.name], fam.name)
        self.family_box.setToolTip("What the model hears your notes as (channel 10 is always drums)")
        self.family_box.activated.connect(lambda _: self._set_config(in_family=self.family_box.currentData()))
        f.addRow("API", self.api_box)
        f.addRow("Input", self.in_box)
        f.addRow("Output", self.out_box)
        f.addRow("You play", self.family_box)
        return midi

    # --- ports --------------------------------------------------------------------------------
    def _api_changed(self, api: str) -> None:
        self._set_config(api=api)
        self.inputs, self.outputs = [], []
        self.refresh_ports()

    def refresh_ports(self) -> None:
        """List ports in a thread (a MIDI system can be slow to answer); the result comes back as a signal."""
        if self._listing:
            return
        self._listing = True
        api = self.session.cfg.api
        lister = self.port_lister

        def run():
            try:
                ins, outs = lister(api)
                self.ports_listed.emit(api, list(ins), list(outs), "")
            except Exception as e:
                self.ports_listed.emit(api, [], [], plain(e))

        threading.Thread(target=run, name="musebridge-ports", daemon=True).start()

    def _ports_listed(self, api: str, ins: list, outs: list, err: str) -> None:
        self._listing = False
        if api != self.session.cfg.api:
            return
        if err:
            self.port_problem = f"MIDI API {api}: {err}"
            self.inputs, self.outputs = [], []
        else:
            self.inputs = [p for p in ins if not _own(p)]
            self.outputs = [p for p in outs if not _own(p)]
            gone = [f"{what} port “{name}” is gone" for what, name, have in
                    (("input", self.session.cfg.in_port, self.inputs), ("output", self.session.cfg.out_port, self.outputs))
                    if name is not None and _match(name, have) is None]
            self.port_problem = ("; ".join(gone) + " — plug it back in or pick another") if gone else ""
        self._rebuild_ports()
        self._status()

    def _rebuild_ports(self) -> None:
        cfg = self.session.cfg
        for box, ports, current, virtual in ((self.in_box, self.inputs, cfg.in_port, VIRTUAL_IN),
                                             (self.out_box, self.outputs, cfg.out_port, VIRTUAL_OUT)):
            box.blockSignals(True)
            box.clear()
            box.addItem(virtual, None)
            for p in ports:
                box.addItem(p, p)
            match = None if current is None else _match(current, ports)
            if current is not None and match is None:
                box.addItem(f"{current}  (missing)", current)
            box.setCurrentIndex(max(box.findData(match or current), 0))
            box.blockSignals(False)

    def _port_chosen(self, key: str, box: QComboBox) -> None:
        self._set_config(**{key: box.currentData()})
        self.refresh_ports()
