"""Call and response (and one-shot): the part of `JamSession` that answers the player.

A mixin: its methods run on the session's worker and keep their state on the session
(`_answer`, the phrase counters, `state`), like the app's window panels. A phrase ends
after `silence_beats` of quiet with no key held (or on a trigger); the answer starts on
the next bar (or beat) line, is sampled straight into the scheduler (best of N when
`candidates` > 1), and ends -- played out, cut short by the player barging in, or
cancelled -- with its `answer_end` and, if any of it sounded, its `AnswerRecord`.
"""

from __future__ import annotations

import time

from musebridge.engine.music.events import NoteOn

from .clock import line_at_or_after, next_line
from .jam_record import AnswerRecord, LiveAnswer
from .ranking import LIKELIHOOD


class CallResponseMixin:
    """Phrase ends -> answers: `_call_tick` (each worker wake), `_answer_now`, and how an
    answer ends (`_finish_answer`, `_barge_in`, `_cancel_answer`)."""

    def _call_tick(self) -> None:
        self._announce_start()
        now = self._song_beat() - self.origin
        if self.state == "answering" and self._answer is not None and now >= self._answer.end:
            self._finish_answer()
        if self.decoder.held:  # a key "held" past the longest note lost its note-off: let it go
            self._take_played(self.decoder.release_held(now, older_than=now - self.cfg.max_note_beats))
        if self.mode != "call":
            return  # one-shot: answers end here, but only a trigger starts one
        if self.state != "listening" or self._phrase_notes == 0 or self.decoder.held:
            return
        if now - self._last_input_beat >= self.cfg.silence_beats:
            self._answer_now(time.perf_counter(), on=self.cfg.answer_on)
        elif now - self._last_input_beat >= self.cfg.silence_beats / 2:
            self.timeline.listen_ahead(now)  # the phrase is ending: hear it before the answer is due
            if self.cfg.candidates <= 1:  # (ranked answers sample their candidates when due: not speculated)
                self._speculate()

    def _speculate(self) -> None:
        """Sample the answer's first tokens now, in the silence, exactly as `_answer_now` will
        when it is due (its start line, shaper and generator; bridge/speculation.py): it takes
        them over then, or -- the player played on, a control or the line changed -- the
        stream rewinds as if they had never been sampled."""
        due = self._last_input_beat + self.cfg.silence_beats + self._first_note_margin()
        start, end = self._answer_span(due, self.cfg.answer_on)
        shaper = self._current_shaper(self._tag + 1)  # (may reseed the generator, as for that answer)
        self.timeline.speculate(start, end, shaper, self._rng)

    def _answer_span(self, now: float, on: str) -> tuple[float, float]:
        """Where an answer due at timeline beat `now` (the first note's margin in) starts
        and ends: the next bar (or beat) line, or the first after what the stream holds."""
        bpb = self.cfg.beats_per_bar
        unit = bpb if on == "bar" else 1.0
        start = max(next_line(now, unit), line_at_or_after(self.timeline.time, unit))
        if start - now > unit:  # the timeline ran ahead (e.g. a long answer): next line after it
            start = line_at_or_after(self.timeline.time, unit)
        return start, start + self.cfg.bars * bpb

    def _answer_now(self, t_end: float, on: str) -> None:
        """The phrase ended at perf time t_end: answer from the next bar (or beat) line."""
        self._cancel_answer()
        margin = self._first_note_margin()
        start, end = self._answer_span(self._song_beat() - self.origin + margin, on)
        self._tag += 1
        self._answer = LiveAnswer(self._tag, start, end, t_end, self.controls.to_dict())
        self.output.watch(self._answer)  # the scheduler writes its note-ons into it as they go out
        self.state = "answering"
        self._phrase_notes = 0
        self.emit("phrase_end", start_beat=start + self.origin, bars=self.cfg.bars)
        self._cancel.clear()
        t_gen = time.perf_counter()
        if self.cfg.candidates > 1:  # rank what fits before the start (less what the first note needs)
            ranker = self._ranker or LIKELIHOOD
            deadline = self._time_at(start - margin) - self.output.scheduler.latency_s
            ans = self.timeline.generate_ranked(start, end, self._current_shaper(), self._rng, ranker.score,
                                                self.cfg.candidates, deadline, emit=self._schedule_model,
                                                cancelled=self._halted)
            self._answer.ranking = {"candidates": ans.made, "score_by": ranker.by,
                                    "score": round(ans.scores[ans.chosen], 4) if ans.scores else None}
            self._measure(ans, ans.sample_s / max(ans.made, 1), end - start)
        else:
            ans = self.timeline.generate(start, end, self._current_shaper(), self._rng, emit=self._schedule_model,
                                         cancelled=self._halted)
            self._measure(ans, time.perf_counter() - t_gen, end - start)
        if self._answer is not None:
            self._answer.speculated = ans.speculated  # (its answer_end says so)
        if ans.first_token_s is not None:
            self.record.first_token_ms.append((t_gen - t_end + ans.first_token_s) * 1000.0)
        if ans.cancelled:
            self._cancel.clear()

    def _announce_start(self) -> None:
        """The answer's first note went out (the scheduler wrote when into it, `first`): its
        `answer_start`, once, with how long after the phrase and how far from its time."""
        a = self._answer
        if a is None or a.first is None or a.announced:
            return
        a.announced = True
        due, sent_at = a.first
        ms = (sent_at - a.phrase_end_t) * 1000.0
        self.record.phrase_to_note_ms.append(ms)
        first = self.record.first_token_ms
        self.emit("answer_start", tag=a.tag, beat=round(a.start + self.origin, 4),
                  error_ms=round((sent_at - due) * 1000.0, 3), phrase_to_note_ms=round(ms, 2),
                  first_token_ms=round(first[-1], 2) if first else None)

    def _finish_answer(self, cancelled: bool = False) -> None:
        """End the current answer. Every answer that started (`phrase_end`) gets its
        `answer_end`; a cancelled one keeps, in the history (and so for `--save`), what of
        it actually sounded, marked cancelled: a take is never lost."""
        self._announce_start()
        a = self._answer
        self._answer = None
        self.output.watch(None)
        self.state = "listening" if self.mode != "accompany" else "accompanying"
        if a is None:
            return
        events = a.played_part(self._song_beat() - self.origin) if cancelled else a.events
        notes = sum(1 for e in events if isinstance(e, NoteOn))
        if notes or not cancelled:  # a cancelled answer that never sounded leaves no take
            self.record.add_answer(AnswerRecord(a.tag, a.start + self.origin, self.cfg.bars, round(self.clock.bpm, 3),
                                                events, a.controls, self.cfg.style, cancelled, **a.ranking))
        self.emit("answer_end", tag=a.tag, notes=notes, cancelled=cancelled, speculated=a.speculated, **a.ranking)

    def _barge_in(self, beat: float) -> None:
        """The player plays over an answer: stop it there and keep what already sounded."""
        a = self._answer
        if a is None:
            return
        self.output.cancel(a.tag)
        self.output.forget()
        back = self.timeline.rewind(beat)
        if back is not None:
            played = [e for e in a.events if back <= e.time <= beat]
            self.timeline.add(played, model=True)
            self.timeline.release_model_notes(max(beat, self.timeline.time))
        a.cut(beat)
        self._finish_answer()
        self._cancel.clear()

    def _cancel_answer(self) -> None:
        """Drop the current answer, releasing what of it sounds; it still ends (`answer_end`,
        cancelled unless it had played to its end)."""
        a = self._answer
        if a is not None:
            self.output.cancel(a.tag)
            self._finish_answer(cancelled=self._song_beat() - self.origin < a.end)
        self._reset_after_cancel()

    def _reset_after_cancel(self) -> None:
        self.output.forget()
        self._pending.clear()
        if self.timeline is not None and self.timeline.model_sounding:
            self.timeline.release_model_notes(self.timeline.time)
        self._cancel.clear()
        self.state = "accompanying" if self.mode == "accompany" else "listening"
