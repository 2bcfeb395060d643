"""Controls over MIDI CC, without ports: the map (defaults, learn, maps saved by older versions)
and the session's CC handling, fed the bytes a controller sends."""

from __future__ import annotations

import json

import pytest

from musebridge.bridge.cc_map import DEFAULTS, TARGETS, CCMap
from musebridge.bridge.config import JamConfig
from musebridge.bridge.session import JamSession
from musebridge.engine.decode.sampling import FOLLOW_CONTROLS, SamplingControls

GM_DEFINED = {0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 16, 17, 18, 19, *range(32, 102), *range(120, 128)}


def test_follow_controls_have_default_ccs_general_midi_leaves_undefined():
    ccs = {name: next(cc for cc, t in DEFAULTS.items() if t == name) for name in FOLLOW_CONTROLS}
    assert ccs == {"follow_key": 25, "follow_groove": 26, "follow_texture": 27}
    assert len(set(DEFAULTS)) == len(DEFAULTS.values()) == len(set(DEFAULTS.values()))  # one CC per control
    assert not GM_DEFINED & set(DEFAULTS)
    assert set(DEFAULTS.values()) <= set(TARGETS)


@pytest.mark.parametrize("name", FOLLOW_CONTROLS)
def test_a_cc_maps_0_127_onto_a_follow_control_0_1(tmp_path, name):
    m = CCMap(tmp_path / "m.json", load=False)
    cc = m.cc_for(name)
    assert m.handle(cc, 0) == (name, 0.0)
    assert m.handle(cc, 127) == (name, 1.0)
    assert m.handle(cc, 64) == (name, round(64 / 127, 3))


def test_learn_binds_a_new_cc_to_a_follow_control_and_saves_it(tmp_path):
    m = CCMap(tmp_path / "m.json", load=False)
    m.learn("follow_groove")
    assert m.handle(40, 99) == ("learned", ("follow_groove", 40))
    assert m.cc_for("follow_groove") == 40 and 26 not in m.map
    assert m.handle(40, 127) == ("follow_groove", 1.0) and m.handle(26, 127) is None
    assert CCMap(tmp_path / "m.json").cc_for("follow_groove") == 40  # saved


def test_a_map_saved_before_the_follow_controls_gets_their_default_ccs_where_free(tmp_path):
    path = tmp_path / "m.json"
    old = {cc: t for cc, t in DEFAULTS.items() if t not in FOLLOW_CONTROLS}
    old[25] = old.pop(102)  # the user learned CC 25 for the piano fader
    path.write_text(json.dumps({"version": 1, "cc": {str(k): v for k, v in old.items()}}))
    m = CCMap(path)
    assert m.map[25] == "strength:piano"  # never taken from the user
    assert m.cc_for("follow_key") is None
    assert (m.cc_for("follow_groove"), m.cc_for("follow_texture")) == (26, 27)


@pytest.mark.parametrize("name", FOLLOW_CONTROLS)
def test_the_sessions_cc_handling_sets_the_follow_control(tmp_path, name):
    """The bytes a knob sends, through the session's MIDI-in handling (the worker's path):
    the control changes through set_controls, and the app hears a "control" event."""
    events: list[dict] = []
    s = JamSession(JamConfig(), ports=False, ccmap=CCMap(tmp_path / "m.json", load=False), listener=events.append)
    before = s.controls
    cc = s.ccmap.cc_for(name)
    s._handle("midi", (bytes([0xB3, cc, 127]), 0.0))  # any channel
    assert getattr(s.controls, name) == 1.0
    assert s.controls == before.with_(**{name: 1.0})  # nothing else moved
    assert s._controls_changed
    s._handle("midi", (bytes([0xB0, cc, 0]), 0.0))
    assert getattr(s.controls, name) == 0.0
    assert [(e["control"], e["value"]) for e in events if e["event"] == "control"] == [(name, 1.0), (name, 0.0)]
    assert getattr(SamplingControls(), name) == getattr(before, name)  # the session began at the product default
