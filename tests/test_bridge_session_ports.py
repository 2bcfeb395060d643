"""The session's port watch without MIDI: stand-in ports that vanish, come back, and lose
their JACK server; what `SessionPorts.check` reports and does (retries, program changes)."""

from __future__ import annotations

from musebridge.bridge.session_ports import SessionPorts


class FakePort:
    def __init__(self, name: str, virtual: bool = False):
        self.name, self.virtual = name, virtual
        self.here, self.server_up, self.closed, self.sent = True, True, False, []

    def connected(self) -> bool:
        return self.here and not self.closed

    def reconnect(self) -> bool:
        return self.here

    def server_lost(self) -> bool:
        return not self.server_up

    def abandon_client(self) -> None:
        self.closed = True

    def reopen(self) -> bool:
        if self.server_up:
            self.closed = False
        return self.server_up

    def send(self, msg: bytes) -> None:
        self.sent.append(msg)


def ports(out_virtual=False) -> tuple[SessionPorts, FakePort, FakePort]:
    sp = SessionPorts()
    sp.out, sp.inp = FakePort("synth:in", out_virtual), FakePort("keys:out")
    sp.programs = [bytes([0xC0, 0])]
    return sp, sp.out, sp.inp


def test_a_port_by_name_that_vanishes_is_reported_once_and_again_when_it_returns():
    sp, out, _ = ports()
    assert sp.check() == []
    out.here = False
    [lost] = sp.check()
    assert (lost.event, lost.kind, lost.role, lost.fields["state"]) == ("port", "lost", "output", "lost")
    assert "vanished" in lost.fields["message"] and sp.check() == [] and sp.lost == {"output"}
    out.here = True
    [back] = sp.check()
    assert (back.kind, back.fields) == ("connected", {"role": "output", "name": "synth:in", "state": "connected"})
    assert out.sent == [bytes([0xC0, 0])] and sp.lost == set()  # the synth gets its programs again


def test_virtual_ports_are_never_reported_lost():
    sp, out, inp = ports(out_virtual=True)
    out.here = False
    assert sp.check() == []


def test_a_dead_server_is_reported_and_the_ports_come_back_with_it():
    sp, out, inp = ports()
    out.server_up = inp.server_up = False
    [gone] = sp.check()
    assert (gone.event, gone.fields) == ("port_lost", {"ports": ["output", "input"]}) and sp.server_lost
    assert out.closed and inp.closed and sp.check() == []  # still down: nothing else is tried
    out.server_up = inp.server_up = True
    [back] = sp.check()
    assert back.event == "port_restored" and back.fields == {"ports": ["output", "input"], "input": "keys:out",
                                                              "output": "synth:in", "waiting": []}
    assert not sp.server_lost and out.sent == [bytes([0xC0, 0])]


def test_drops_are_reported_when_they_grow():
    sp = SessionPorts()
    assert sp.dropped_news() is None  # nothing lost
    sp.dropped.sysex += 2
    sp.dropped.bytes += 9
    sp._report_due._next = 0.0  # the half second has passed
    assert sp.dropped_news() == {"total": 2, **sp.dropped.as_dict()}
    sp._report_due._next = 0.0
    assert sp.dropped_news() is None  # no more since


def test_the_session_owns_the_echo_guard_and_its_output_feeds_it(monkeypatch):
    """The output tells the session's guard what it sent; the input side asks the guard,
    never the port, and the guard outlives the ports (a reopened jam keeps a proven loop)."""
    from types import SimpleNamespace

    from musebridge.bridge import midi_input, ports as ports_mod

    made = []

    class Out(FakePort):
        def __init__(self, name, api=None, echo=None):
            super().__init__(name)
            self.echo = echo
            made.append(self)

    class In(FakePort):
        def __init__(self, name, api=None, callback=None, dropped=None):
            super().__init__(name)

    monkeypatch.setattr(ports_mod, "MidiOutput", Out)
    monkeypatch.setattr(midi_input, "MidiInput", In)
    sp = SessionPorts()
    cfg = SimpleNamespace(out_port="synth:in", in_port="keys:out", api="jack")
    guard = sp.open(cfg, lambda m, t: None)
    assert guard is sp.echo and made[0].echo is guard
    sp.close()
    assert sp.open(cfg, lambda m, t: None) is guard and made[1].echo is guard
