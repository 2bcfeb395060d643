"""Accompany: the part of `JamSession` that plays along with the player.

A mixin: its methods run on the session's worker and keep their state on the session.
The model generates half a beat at a time ahead of the playhead; what it made waits in
`_pending` until it enters the `lookahead_beats` window, then goes to the scheduler and
into `_committed`. When the player plays, what was not committed is regenerated: the
timeline rewinds to the mark before the note and the committed notes are put back.
"""

from __future__ import annotations

import time

from musebridge.engine.music.events import Event

from .clock import line_at_or_after


class AccompanyMixin:
    """`_accompany_tick` (each worker wake) and `_accompany_input` (the player played)."""

    def _accompany_tick(self) -> None:
        if self.state != "accompanying":
            return
        now = self._song_beat() - self.origin
        commit = now + self.cfg.lookahead_beats
        keep = []
        for ev in self._pending:  # commit what entered the window
            if ev.time <= commit:
                self._schedule_model(ev, commit=True)
            else:
                keep.append(ev)
        self._pending = keep
        tl = self.timeline
        if tl.time < now:  # fell behind (or just started): jump to the playhead
            tl.advance_to(line_at_or_after(now, 0.25))
        if tl.time < commit + 1.0:
            self._cancel.clear()
            t_gen = time.perf_counter()
            ans = tl.generate(tl.time, tl.time + 0.5, self._current_shaper(), self._rng, emit=self._pending.append,
                              cancelled=self._halted, first_note=False, close=False)
            self._measure(ans, time.perf_counter() - t_gen, 0.5)

    def _accompany_input(self, beat: float) -> list[Event]:
        """Regenerate what was not committed: rewind to before the player's note and put back
        the committed model notes up to it; returns the committed ones after it (the caller
        adds them after the player's events, keeping time order)."""
        self._pending.clear()
        back = self.timeline.rewind(beat)
        if back is None:
            return []
        committed = [e for _, e in self._committed if back <= e.time]
        self.timeline.add([e for e in committed if e.time <= beat], model=True)
        return [e for e in committed if e.time > beat]
