"""The desktop app as a thin shell over the jam session (pytest-qt, offscreen)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PyQt6.QtWidgets")

import mido  # noqa: E402
import numpy as np  # noqa: E402
from PyQt6.QtGui import QImage  # noqa: E402

from musebridge.bridge.cc_map import CCMap  # noqa: E402
from musebridge.bridge.jam_record import AnswerRecord, RollNote  # noqa: E402
from musebridge.engine.training.checkpoint import DEFAULT_MODEL, load_vocab  # noqa: E402
from musebridge.engine.music.events import NoteOff, NoteOn  # noqa: E402
from musebridge.engine.music.midi_file import read_metadata, read_midi  # noqa: E402
from musebridge.engine.decode.sampling import FOLLOW_CONTROLS, NEG, STRENGTH_SCALE, LogitShaper, SamplingControls  # noqa: E402
from musebridge.engine.music.vocab import NOTE  # noqa: E402
from musebridge.gui import settings as saved  # noqa: E402
from musebridge.gui.host import SessionHost  # noqa: E402
from musebridge.gui.window import MainWindow  # noqa: E402


class Ports:
    """A port lister the test controls: what the MIDI system 'has' right now."""

    def __init__(self, ins=("Keystation 49:in",), outs=("Synth:in",)):
        self.ins, self.outs, self.error = list(ins), list(outs), None

    def __call__(self, api):
        if self.error:
            raise self.error
        return list(self.ins), list(self.outs)


@pytest.fixture
def make_window(qtbot, tmp_path):
    made = []

    def make(lister=None, ini="settings.ini"):
        qs = saved.open_settings(str(tmp_path / ini))
        values = saved.load(qs)
        host = SessionHost(saved.to_config(values), ports=False, ccmap=CCMap(tmp_path / "midi_map.json", load=False))
        win = MainWindow(host, qs, values, port_lister=lister or Ports(), refresh_ms=0)
        qtbot.addWidget(win)
        made.append(win)
        return win

    yield make
    for w in made:
        w.close()


def jack_window(qtbot, tmp_path):
    """The app on real JACK ports (a private server: the `jack_server` fixture), not started."""
    from musebridge.gui.port_watch import PortWatcher

    qs = saved.open_settings(str(tmp_path / "s.ini"))
    values = {**saved.load(qs), "api": "jack"}
    host = SessionHost(saved.to_config(values), ports=True, ccmap=CCMap(tmp_path / "m.json", load=False))
    win = MainWindow(host, qs, values, port_lister=PortWatcher(), refresh_ms=0)
    qtbot.addWidget(win)
    return host, win


def note_on_mask(vocab, family):
    return (vocab.kind == NOTE) & (vocab.vbin > 0) & (vocab.family == vocab.family_index[family])


def test_faders_and_mutes_set_the_sessions_sampling_bias(make_window):
    win = make_window()
    s = win.session
    vocab = load_vocab(DEFAULT_MODEL)
    win.mixer.strips["bass"].slider.setValue(100)
    win.mixer.strips["piano"].slider.setValue(25)
    win.mixer.strips["drums"].mute.setChecked(True)
    assert s.controls.strengths["bass"] == 1.0
    assert s.controls.strengths["piano"] == 0.25
    assert s.controls.strengths["drums"] == 0.0
    bias = LogitShaper(vocab, s.controls).bias
    assert np.allclose(bias[note_on_mask(vocab, "bass")], STRENGTH_SCALE)
    assert np.allclose(bias[note_on_mask(vocab, "piano")], STRENGTH_SCALE * (2 * 0.25 - 1))
    assert (bias[note_on_mask(vocab, "drums")] <= NEG).all()
    assert (bias[note_on_mask(vocab, "strings")] == 0).all()  # untouched: neutral
    win.mixer.strips["drums"].mute.setChecked(False)  # un-mute restores the fader
    assert s.controls.strengths["drums"] == 0.5
    win.temp[1].setValue(80)
    win.top_p[1].setValue(90)
    assert (s.controls.temperature, s.controls.top_p) == (0.8, 0.9)
    win.bars_box.setValue(4)
    win.quant[1].setValue(50)
    assert (s.cfg.bars, s.cfg.quantize) == (4.0, 0.5)


def test_midi_learn_and_cc_moves_show_on_the_fader(make_window):
    win = make_window()
    strip = win.mixer.strips["bass"]
    win._learn("bass")
    assert win.session.ccmap.learning == "strength:bass" and strip.cc.text() == "learning…"
    # the session reports a learned CC and then a CC move, from its own thread
    win.session.ccmap.handle(30, 0)
    t = threading.Thread(target=lambda: (win.session.emit("midi_learn", control="strength:bass", cc=30),
                                         win.session.emit("control", control="strength:bass", value=0.9)))
    t.start()
    t.join()
    from PyQt6.QtWidgets import QApplication

    deadline = time.monotonic() + 2
    while strip.slider.value() != 90 and time.monotonic() < deadline:
        QApplication.processEvents()
    assert strip.cc.text() == "CC 30" and strip.slider.value() == 90


def test_follow_faders_and_min_p_set_the_sessions_controls(make_window):
    win = make_window()
    s = win.session
    default = SamplingControls()
    assert set(win.follow.faders) == set(FOLLOW_CONTROLS)
    for name, fader in win.follow.faders.items():  # they start at the product defaults
        assert fader.slider.value() == round(getattr(default, name) * 100) == round(getattr(s.controls, name) * 100)
        assert "Right-click: MIDI learn" in fader.slider.toolTip()
    assert "key" in win.follow.faders["follow_key"].toolTip().lower()
    assert "swing" in win.follow.faders["follow_groove"].toolTip()
    assert "held notes" in win.follow.faders["follow_texture"].toolTip()
    for i, name in enumerate(FOLLOW_CONTROLS):
        before = s.controls
        win.follow.faders[name].slider.setValue(30 + 20 * i)
        assert s.controls == before.with_(**{name: (30 + 20 * i) / 100})  # that control, and only it
        assert win.follow.faders[name].value.text() == f"{30 + 20 * i}%"
    win.follow.faders["follow_key"].slider.setValue(0)
    assert s.controls.follow_key == 0.0 and win.follow.faders["follow_key"].value.text() == "off"
    win.min_p[1].setValue(5)
    assert s.controls.min_p == 0.05 and win.min_p[2].text() == "0.05"
    # what generation is given: the session's controls (and the seed asked for)
    assert win._controls_now(9) == s.controls.with_(seed=9)
    assert (win._controls_now(9).follow_groove, win._controls_now(9).follow_texture) == (0.5, 0.7)


def test_a_cc_moves_a_follow_control_and_its_fader_and_midi_learn_rebinds_it(make_window, qtbot):
    """CCs as the jam's worker handles them (its thread): the session's control changes and
    the fader follows; MIDI learn from the fader binds a new CC and shows it."""
    win = make_window()
    s = win.session

    def cc(number, value):
        t = threading.Thread(target=s._handle, args=("midi", (bytes([0xB0, number, value]), time.perf_counter())))
        t.start()
        t.join()

    for name, number in zip(FOLLOW_CONTROLS, (25, 26, 27)):
        fader = win.follow.faders[name]
        assert fader.cc.text() == f"CC {number}"
        cc(number, 127)
        assert getattr(s.controls, name) == 1.0
        qtbot.waitUntil(lambda f=fader: f.slider.value() == 100, timeout=2000)
        assert fader.value.text() == "100%"
    groove = win.follow.faders["follow_groove"]
    groove.learn.emit("follow_groove")  # what the fader's right-click menu sends
    assert s.ccmap.learning == "follow_groove" and groove.cc.text() == "learning…"
    cc(41, 5)  # the knob the player moves next
    qtbot.waitUntil(lambda: groove.cc.text() == "CC 41", timeout=2000)
    assert s.controls.follow_groove == 1.0  # learning moves nothing
    cc(41, 32)
    assert s.controls.follow_groove == round(32 / 127, 3)
    qtbot.waitUntil(lambda: groove.slider.value() == 25, timeout=2000)
    cc(26, 0)  # its old CC moves nothing now
    assert s.controls.follow_groove == round(32 / 127, 3)
    assert [win.follow.faders[n].slider.value() for n in FOLLOW_CONTROLS] == [100, 25, 100]


def fake_answer(tag=1, start=8.0, seed=11):
    evs = [NoteOn(8.0, "piano", 60, 90), NoteOn(8.0, "bass", 36, 100), NoteOff(8.5, "piano", 60), NoteOn(8.5, "piano", 64, 80),
           NoteOff(9.0, "piano", 64), NoteOff(10.0, "bass", 36), NoteOn(11.0, "strings", 67, 70), NoteOff(12.0, "strings", 67)]
    return {"tag": tag, "start": start, "bars": 1.0, "bpm": 96.0, "events": evs, "style": "jazz",
            "controls": {"temperature": 0.9, "top_k": 0, "top_p": 0.95, "seed": seed, "strengths": {"bass": 0.8},
                         "key": None, "density": None}}


def test_answers_become_clips_that_export_as_valid_midi(make_window, tmp_path, qtbot):
    win = make_window()
    s = win.session
    s.record.add_notes([RollNote("user", "piano", 62, 4.0, 5.0, 80)])
    s.record.add_answer(AnswerRecord(**fake_answer()))
    with qtbot.waitSignal(win.host.event, timeout=2000):
        threading.Thread(target=lambda: s.emit("answer_end", tag=1, notes=4)).start()
    assert win.clips.count() == 1
    clip = win.clips.current_clip()
    assert clip.prompt.notes and clip.prompt.notes[0].pitch == 62  # the phrase it answered
    out = win.export_clip(clip, tmp_path / "a.mid")
    back = read_midi(out)
    got = sorted((n.family, n.pitch, round(n.start, 3), round(n.duration, 3), n.velocity) for n in back.notes)
    assert got == [("bass", 36, 0.0, 2.0, 100), ("piano", 60, 0.0, 0.5, 90), ("piano", 64, 0.5, 0.5, 80),
                   ("strings", 67, 3.0, 1.0, 70)]
    mid = mido.MidiFile(out)
    names = [next(m.name for m in tr if m.type == "track_name") for tr in mid.tracks[1:]]
    programs = {m.program for tr in mid.tracks for m in tr if m.type == "program_change"}
    assert names == ["piano", "bass", "strings"] and programs == {0, 33, 40}
    assert [round(mido.tempo2bpm(m.tempo), 3) for tr in mid.tracks for m in tr if m.type == "set_tempo"] == [96.0]
    meta = read_metadata(out)
    assert meta["seed"] == 11 and meta["temperature"] == 0.9 and meta["style"] == "jazz" and meta["strengths"] == {"bass": 0.8}
    # dragging the clip out hands over a file URL of the same .mid
    data = win.clips.mimeData([win.clips.item(0)])
    path = data.urls()[0].toLocalFile()
    assert path.endswith(".mid") and len(read_midi(path).notes) == 4


def test_a_clip_carries_the_follow_controls_and_recalls_them(make_window, qtbot, tmp_path):
    """A jam answer made with the follow faders up exports them in its .mid; the file's
    metadata rebuilds the very controls, and regenerating the clip keeps them (new seed)."""
    win = make_window()
    s = win.session
    for name, v in zip(FOLLOW_CONTROLS, (40, 60, 80)):
        win.follow.faders[name].slider.setValue(v)
    win.min_p[1].setValue(4)
    win.seed_box.setValue(11)
    made = s.controls  # what the session's answer records carry (its `controls.to_dict()`)
    s.record.add_answer(AnswerRecord(**{**fake_answer(), "controls": made.to_dict()}))
    with qtbot.waitSignal(win.host.event, timeout=2000):
        threading.Thread(target=lambda: s.emit("answer_end", tag=1, notes=4)).start()
    clip = win.clips.current_clip()
    meta = read_metadata(win.export_clip(clip, tmp_path / "a.mid"))
    assert (meta["follow_key"], meta["follow_groove"], meta["follow_texture"], meta["min_p"]) == (0.4, 0.6, 0.8, 0.04)
    assert SamplingControls.from_dict(meta) == made  # every control, recalled from the file
    for name in FOLLOW_CONTROLS:  # the faders move on; the clip keeps what made it
        win.follow.faders[name].slider.setValue(0)
    with qtbot.waitSignal(win.job.done, timeout=60000):
        win.regenerate_clip()
    again = win.clips.clips[-1]
    assert again.source == "regenerated"
    assert SamplingControls.from_dict(again.controls) == made.with_(seed=again.seed) and again.seed != 11
    meta2 = read_metadata(win.export_clip(again, tmp_path / "b.mid"))
    assert SamplingControls.from_dict(meta2) == made.with_(seed=again.seed)


def test_window_survives_ports_vanishing(make_window, qtbot):
    ports = Ports()
    win = make_window(lister=ports)
    with qtbot.waitSignal(win.ports_listed, timeout=2000):
        win.refresh_ports()
    assert [win.in_box.itemText(i) for i in range(win.in_box.count())][1:] == ["Keystation 49:in"]
    win.in_box.setCurrentIndex(1)
    win.in_box.activated.emit(1)
    assert win.session.cfg.in_port == "Keystation 49:in"
    qtbot.waitUntil(lambda: not win._listing, timeout=2000)
    ports.ins = []  # the keyboard is unplugged
    with qtbot.waitSignal(win.ports_listed, timeout=2000):
        win.refresh_ports()
    assert "input port “Keystation 49:in” is gone" in win.st_error.text()
    assert "(missing)" in win.in_box.currentText()
    ports.ins = ["Keystation 49:in"]  # and back
    with qtbot.waitSignal(win.ports_listed, timeout=2000):
        win.refresh_ports()
    assert win.st_error.text() == "" and win.in_box.currentText() == "Keystation 49:in"
    ports.error = RuntimeError("no JACK server is running")
    with qtbot.waitSignal(win.ports_listed, timeout=2000):
        win.refresh_ports()
    assert "no JACK server is running" in win.st_error.text()


def test_settings_persist(make_window):
    win = make_window()
    win.temp[1].setValue(130)
    win.mixer.strips["guitar"].slider.setValue(70)
    win.mixer.strips["drums"].mute.setChecked(True)
    win.set_mode("accompany")
    for name, v in zip(FOLLOW_CONTROLS, (35, 55, 75)):
        win.follow.faders[name].slider.setValue(v)
    win.min_p[1].setValue(8)
    win.close()
    again = make_window()
    assert again.session.controls.temperature == 1.3
    assert [getattr(again.session.controls, n) for n in FOLLOW_CONTROLS] == [0.35, 0.55, 0.75]
    assert [again.follow.faders[n].slider.value() for n in FOLLOW_CONTROLS] == [35, 55, 75]
    assert again.session.controls.min_p == 0.08 and again.min_p[1].value() == 8 and again.min_p[2].text() == "0.08"
    assert again.session.controls.strengths == {"guitar": 0.7, "drums": 0.0}
    assert again.mixer.strips["drums"].mute.isChecked() and again.mixer.strips["guitar"].slider.value() == 70
    assert again.session.cfg.mode == "accompany" and again.mode_group.checkedId() == 1


def test_a_damaged_saved_control_falls_back_alone(make_window, tmp_path):
    qs = saved.open_settings(str(tmp_path / "settings.ini"))
    saved.save(qs, {"follow_key": 0.6, "follow_groove": 7.0, "temperature": 1.4})  # 7: out of range (a hand edit)
    qs.sync()
    win = make_window()
    c = win.session.controls
    assert (c.follow_key, c.temperature) == (0.6, 1.4)
    assert c.follow_groove == SamplingControls().follow_groove


def test_start_and_stop_never_block_the_window(make_window, qtbot):
    win = make_window()
    t0 = time.perf_counter()
    win.toggle_start()  # loads the model: in a thread
    assert time.perf_counter() - t0 < 0.2
    # the host's "idle" reaches the window as a queued signal: wait for the button to show it
    qtbot.waitUntil(lambda: win.host.running and win.host.idle and "Stop" in win.start_btn.text(), timeout=30000)
    assert win.start_btn.isChecked()
    win.panic()
    win.toggle_start()
    qtbot.waitUntil(lambda: not win.host.running and win.host.idle, timeout=10000)
    assert not win.start_btn.isChecked()


def test_variations_run_in_a_thread_and_carry_their_seeds(make_window, qtbot, tmp_path):
    win = make_window()
    s = win.session
    s.record.add_notes([RollNote("user", "piano", p, i * 0.5, i * 0.5 + 0.5, 90)
                        for i, p in enumerate([60, 64, 67, 72])])
    win.seed_box.setValue(100)
    win.bars_box.setValue(0.5)
    win.var_n.setValue(2)
    with qtbot.waitSignal(win.job.done, timeout=60000):
        win.variations()
    assert not win.progress.isHidden() and win.progress.format().startswith("2 ready")
    clips = win.clips.clips
    assert [c.source for c in clips] == ["variation", "variation"]
    assert [c.seed for c in clips] == [100, 101]
    meta = read_metadata(win.export_clip(clips[1], tmp_path / "v.mid"))
    assert meta["seed"] == 101 and meta["source"] == "variation"
    win.clips.select(clips[0])
    with qtbot.waitSignal(win.job.done, timeout=60000):
        win.regenerate_clip()
    again = win.clips.clips[-1]
    assert again.source == "regenerated" and again.prompt is clips[0].prompt and again.seed not in (100, 101)


def test_bare_musebridge_without_a_display_prints_help():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"  # renders, but nobody would see a window: help instead
    r = subprocess.run([sys.executable, "-m", "musebridge"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "gui" in r.stdout and "no display" in r.stdout


def test_panic_on_a_real_port_and_the_port_vanishing(jack_server, qtbot, tmp_path):
    from musebridge.bridge.midi_input import MidiInput
    from musebridge.engine.music.events import Note
    from musebridge.gui.port_watch import PortWatcher

    monitor = MidiInput("GUI monitor", virtual=True, client_name="monitor")
    qs = saved.open_settings(str(tmp_path / "s.ini"))
    values = {**saved.load(qs), "api": "jack", "out_port": "GUI monitor", "bpm": 240.0}
    host = SessionHost(saved.to_config(values), ports=True, ccmap=CCMap(tmp_path / "m.json", load=False))
    win = MainWindow(host, qs, values, port_lister=PortWatcher(), refresh_ms=0)
    qtbot.addWidget(win)
    try:
        win.toggle_start()
        qtbot.waitUntil(lambda: host.running and host.idle, timeout=30000)
        assert not win.error, win.error
        host.session.replay([Note(0.0, 8.0, 60, 100, "piano"), Note(0.0, 8.0, 36, 100, "bass")])
        got: list[bytes] = []

        def sounding():
            got.extend(m for m, _ in monitor.iter_pending())
            return sum(m[0] & 0xF0 == 0x90 for m in got) == 2

        qtbot.waitUntil(sounding, timeout=5000)
        win.panic()

        def released():
            got.extend(m for m, _ in monitor.iter_pending())
            offs = {(m[0] & 0x0F, m[1]) for m in got if m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0)}
            ons = {(m[0] & 0x0F, m[1]) for m in got if m[0] & 0xF0 == 0x90 and m[2] > 0}
            return ons <= offs

        qtbot.waitUntil(released, timeout=2000)
        monitor.close()  # the synth goes away mid-jam
        with qtbot.waitSignal(win.ports_listed, timeout=5000):
            win.refresh_ports()
        assert "output port “GUI monitor” is gone" in win.st_error.text()
        assert host.running
    finally:
        win.close()
        monitor.close()
    assert not host.running


def test_screenshot_command_writes_a_png(tmp_path):
    out = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-m", "musebridge", "gui", "--screenshot", str(out)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    img = QImage(str(out))
    assert not img.isNull() and img.width() >= 1000 and img.height() >= 600


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (Debian xvfb; .ci/run installs it)")
def test_the_real_window_under_xvfb_renders_a_screenshot(tmp_path):
    """The app in a real X window (xcb, not offscreen) on a virtual screen; the PNG lands in
    docs/img/ for a person to look at."""
    display = f":{90 + os.getpid() % 200}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = Path(__file__).resolve().parents[1] / "docs" / "img" / "musebridge-xvfb.png"
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "HOME": str(tmp_path)}
        r = subprocess.run([sys.executable, "-m", "musebridge", "gui", "--screenshot", str(out)], capture_output=True,
                           text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        xvfb.terminate()
        xvfb.wait(10)
    img = QImage(str(out))
    assert not img.isNull() and img.width() >= 1000 and img.height() >= 600
    colours = {img.pixel(x, y) for x in range(0, img.width(), 37) for y in range(0, img.height(), 23)}
    assert len(colours) > 50  # a drawn window, not a blank screen


def test_status_bar_counts_the_input_messages_the_jam_dropped(jack_server, qtbot, tmp_path):
    """Garbage into the jam's real input shows as "N input messages dropped" in the status bar
    (read from the session's public counts); a clean session shows no such words."""
    import rtmidi

    from musebridge.bridge.jam_probe import bridge_port
    host, win = jack_window(qtbot, tmp_path)
    raw = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="gui garbage")
    try:
        win.toggle_start()
        qtbot.waitUntil(lambda: host.running and host.idle, timeout=30000)
        qtbot.waitUntil(lambda: "notes in" in win.st_state.text(), timeout=2000)
        assert "dropped" not in win.st_state.text()
        raw.open_port(raw.get_ports().index(bridge_port("In")))
        time.sleep(0.05)
        raw.send_message([0x3C, 0x40])  # two stray data bytes
        raw.send_message([0xF0, 0x01])  # a torn sysex
        raw.send_message([0x90, 60, 1])  # which ends the sysex, and is heard
        qtbot.waitUntil(lambda: "3 input messages dropped" in win.st_state.text(), timeout=3000)
        assert host.session.counts().notes_in == 1
    finally:
        raw.delete()
        win.close()
    assert not host.running


def test_a_knob_on_the_jams_real_input_moves_a_follow_fader(jack_server, qtbot, tmp_path):
    """CC 26 from a controller through the running jam's real JACK input: the session's
    follow_groove changes and the app's Groove fader moves with it."""
    import rtmidi

    from musebridge.bridge.jam_probe import bridge_port
    host, win = jack_window(qtbot, tmp_path)
    knob = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="gui knob")
    try:
        win.toggle_start()
        qtbot.waitUntil(lambda: host.running and host.idle, timeout=30000)
        knob.open_port(knob.get_ports().index(bridge_port("In")))
        time.sleep(0.05)
        knob.send_message([0xB0, 26, 127])
        groove = win.follow.faders["follow_groove"]
        qtbot.waitUntil(lambda: groove.slider.value() == 100, timeout=3000)
        assert host.session.controls.follow_groove == 1.0
        assert host.session.controls.follow_key == SamplingControls().follow_key
    finally:
        knob.delete()
        win.close()
    assert not host.running


def test_transport_and_stop_events_reach_the_window(make_window, monkeypatch):
    """A DAW's transport shows in the status bar and a stop freezes the playhead where it was
    (both branches were once unreachable behind the branch that clears the live region)."""
    win = make_window()
    win._live_region = (4.0, 12.0, "playing")
    win._on_event({"event": "transport", "status": "stop"})
    assert win._live_region is None and "DAW transport: stop" in win.statusBar().currentMessage()
    monkeypatch.setattr(type(win), "_playhead_now", property(lambda self: 7.5))
    win._on_event({"event": "stopped"})
    assert win._frozen_playhead == 7.5
