"""A demo jam for screenshots and first looks: two played phrases, the model's answers.

The player's phrases are written out (piano, A minor); the answers are real: the model
answers each phrase through the same `Timeline` the jam session uses (streamed prompt,
answer from the bar line, seeded), so the roll, the clips and the meter's first-token,
tokens/s and realtime figures are what this machine measured. They go into the session's
`record` as a jam's would. Nothing is sent anywhere: the session stays stopped, with no ports.
"""

from __future__ import annotations

import time

import numpy as np

from musebridge.bridge.jam_record import AnswerRecord, RollNote
from musebridge.engine.music.events import NoteOff, NoteOn, event_sort_key
from musebridge.engine.decode.sampling import LogitShaper

# (start beat, length, pitch, velocity): two bars each, A minor, chords under a melody
PHRASE_A = [(0, 1.5, 57, 72), (0, 1.5, 60, 70), (0, 1.5, 64, 70), (0, 0.5, 76, 96), (0.5, 0.5, 74, 84), (1, 0.5, 72, 88),
            (1.5, 0.5, 76, 90), (2, 1.0, 81, 100), (3, 0.5, 79, 86), (3.5, 0.5, 76, 82),
            (4, 1.5, 53, 70), (4, 1.5, 57, 68), (4, 1.5, 60, 68), (4, 0.5, 77, 94), (4.5, 0.5, 76, 84), (5, 0.5, 74, 86),
            (5.5, 0.5, 72, 80), (6, 1.5, 55, 72), (6, 1.5, 59, 70), (6, 1.5, 62, 70), (6, 1.75, 74, 92)]
PHRASE_B = [(0, 1.0, 57, 74), (0, 1.0, 64, 70), (0, 0.75, 81, 104), (0.75, 0.25, 79, 80), (1, 0.5, 76, 90),
            (1.5, 0.5, 79, 88), (2, 0.5, 84, 100), (2.5, 0.5, 83, 86), (3, 1.0, 81, 92), (2, 1.5, 53, 70), (2, 1.5, 60, 68),
            (4, 0.5, 77, 92), (4.5, 0.5, 79, 84), (5, 0.5, 81, 90), (5.5, 0.5, 76, 84), (4, 2.0, 52, 72), (4, 2.0, 59, 70),
            (6, 2.0, 76, 96), (6, 2.0, 56, 74), (6, 2.0, 64, 72)]
NOW_PLAYING = [(0, 0.5, 69, 90), (0.5, 0.5, 72, 84), (1, None, 76, 92), (1, None, 57, 74), (1, None, 64, 70)]
STRENGTHS = {"bass": 0.8, "strings": 0.7, "drums": 0.0, "synth_lead": 0.3}


def _roll(notes, at: float, playhead: float) -> list[RollNote]:
    return [RollNote("user", "piano", p, at + s, None if d is None else at + s + d, v)
            for s, d, p, v in notes if at + s <= playhead]


def _events(notes: list[RollNote]) -> list:
    evs = []
    for n in notes:
        evs.append(NoteOn(n.on, n.family, n.pitch, n.velocity))
        if n.off is not None:
            evs.append(NoteOff(n.off, n.family, n.pitch))
    return sorted(evs, key=event_sort_key)


def load_demo(window, runtime=None, style: str | None = "pop", seed: int = 7) -> None:
    """Fill `window`'s (stopped, portless) session's record with a played jam and real answers."""
    from musebridge.bridge.timeline import Timeline, jam_families

    from .jobs import open_runtime

    s = window.session
    record = s.record
    for fam, value in STRENGTHS.items():
        strip = window.mixer.strips[fam]
        if value == 0:
            strip.mute.setChecked(True)
        else:
            strip.set_strength(value, emit=True)
    window.seed_box.setValue(seed)
    i = window.style_box.findData(style)
    if i >= 0:
        window.style_box.setCurrentIndex(i)
        window._set_config(style=style)
    cfg = s.cfg
    bpb, bpm, bars = cfg.beats_per_bar, cfg.bpm, cfg.bars
    rt = runtime or open_runtime(cfg.model, cfg.backend)
    window.backend = getattr(rt, "name", None)
    tl = Timeline(rt, cfg.style, jam_families(cfg.in_family, s.controls.strengths), bpb)
    shaper = LogitShaper(tl.vocab, s.controls)
    rng = np.random.default_rng(seed)
    phrase_len = 2 * bpb
    at = 0.0
    for tag, phrase in enumerate((PHRASE_A, PHRASE_B), start=1):
        mine = _roll(phrase, at, float("inf"))
        record.add_notes(mine)
        tl.add(_events(mine))
        start, end = at + phrase_len, at + phrase_len + bars * bpb
        t0 = time.perf_counter()
        ans = tl.generate(start, end, shaper, rng)
        dt = time.perf_counter() - t0
        if ans.first_token_s is not None:
            record.first_token_ms.append(ans.first_token_s * 1000.0)
        record.generated(ans.tokens, dt, (end - start) * 60.0 / bpm)
        events = [e for e in ans.events if isinstance(e, (NoteOn, NoteOff))]
        for e in events:
            on = isinstance(e, NoteOn)
            record.note("model", e.family, e.pitch, e.time, on, e.velocity if on else 0)
        record.end_open("model", end)
        record.add_answer(AnswerRecord(tag, start, bars, bpm, events, s.controls.to_dict(), cfg.style))
        at = end
    playhead = at + 1.6
    record.add_notes(_roll(NOW_PLAYING, at, playhead))
    window._frozen_playhead = playhead
    window.sync_history()
    window.tick()
    window.roll.fit_all()
