"""Events <-> tokens, incrementally, in both directions.

`StreamEncoder` appends tokens as timed events arrive and never re-encodes the past:
the realtime bridge feeds it one played note at a time, and `encode_piece` is the same
encoder fed a whole piece in canonical order, so offline data and live prompts always
tokenize identically. `StreamDecoder` turns generated tokens back into timed events
one token at a time, keeping the output valid MIDI (a re-struck key is released first,
a stray note-off is dropped, `close_all` releases whatever still sounds).

Time is counted in grid ticks: 1/ticks_per_beat of a beat in beats mode, wait_ms in
seconds mode. Onsets and releases are rounded to the grid independently, and a note
always lasts at least one tick, so onset and duration stay within one tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .events import (DEFAULT_BPM, MAX_REST_BEATS, REST_CYCLE_BEATS, Event, NoteOff, NoteOn, Pedal, Piece, Tempo,
                     TempoMap, TimeSignature, cut_rest, iter_notes)
from .families import fold_into_range
from .vocab import END, INSTRUMENT, NOTE, PEDAL, SPECIAL, STYLE, TEMPO, TIMESIG, WAIT, Vocabulary

SECONDS_MODE_BPM = 125.0  # 480 PPQ at 125 BPM: one MIDI tick per millisecond


@dataclass
class EncoderStats:
    """What the encoder had to change to fit the vocabulary (reported by the data build)."""

    folded: int = 0  # pitches moved by octaves into their family's range
    dropped: int = 0  # notes with no place in the vocabulary (drum keys off the map)
    merged: int = 0  # unison onsets in one family at one tick, merged
    stray_offs: int = 0  # note-offs of notes that were not sounding
    late: int = 0  # events earlier than the time already encoded (moved to now)


class StreamEncoder:
    """Appends tokens for events that arrive in time order.

    `add(event)` returns only the new tokens. Times are in beats; in seconds mode a
    tempo map converts them (live input can pass `tempo_map=None` and seconds directly
    via `seconds=True`).
    """

    def __init__(self, vocab: Vocabulary, tempo_map: TempoMap | None = None, seconds: bool = False):
        self.vocab = vocab
        self.cfg = vocab.config
        self.tempo_map = tempo_map if tempo_map is not None else TempoMap([])
        self.times_in_seconds = seconds
        self.tick = 0  # grid time of everything encoded so far
        self.stats = EncoderStats()
        # (family index, pitch) -> [onset tick, number of overlapping strikes]
        self._sounding: dict[tuple[int, int], list[int]] = {}
        self._pending_offs: list[tuple[int, int, int]] = []  # (tick, family, pitch)
        self._pedal: dict[int, bool] = {}
        self._tempo: int | None = None
        self._timesig: int | None = None
        self.closed = False
        # (cap, cycle) of a rest in grid ticks; seconds mode counts beats of DEFAULT_BPM
        per_beat = (self.cfg.ticks_per_beat if self.cfg.time_mode == "beats"
                    else max(round(60_000.0 / DEFAULT_BPM / self.cfg.wait_ms), 1))
        self._rest_limit = (MAX_REST_BEATS * per_beat, REST_CYCLE_BEATS * per_beat)

    # --- time ---------------------------------------------------------------------------
    def to_tick(self, time: float) -> int:
        """Grid tick of a time in beats (or seconds, in seconds mode)."""
        if self.cfg.time_mode == "beats":
            return round(time * self.cfg.ticks_per_beat)
        seconds = time if self.times_in_seconds else self.tempo_map.to_seconds(time)
        return round(seconds * 1000.0 / self.cfg.wait_ms)

    def advance(self, tick: int) -> list[int]:
        """Wait until `tick`, releasing deferred note-offs on the way."""
        out: list[int] = []
        while True:
            due = [p for p in self._pending_offs if p[0] <= tick]
            target = min((p[0] for p in due), default=tick)
            out += self._wait_to(target)
            if not due:
                return out
            now = [p for p in due if p[0] == target]
            self._pending_offs = [p for p in self._pending_offs if p[0] != target]
            for _, fi, pitch in sorted(now, key=lambda p: (p[1], p[2])):
                out += self._release(fi, pitch)

    def _wait_to(self, tick: int) -> list[int]:
        """Waits up to `tick`; a rest longer than MAX_REST_BEATS is encoded cut to it.

        The clock (`self.tick`) still moves to `tick`, so a live session keeps song time
        while the tokens, which only ever see the gap, stay a bounded few per rest.
        """
        out = []
        gap = cut_rest(tick - self.tick, *self._rest_limit)
        biggest = self.cfg.max_wait_ticks
        while gap > 0:
            step = min(gap, biggest)
            out.append(self.vocab.wait(step))
            gap -= step
        self.tick = max(self.tick, tick)
        return out

    # --- events -------------------------------------------------------------------------
    def prefix(self, style: str | None, families: list[str]) -> list[int]:
        """Start token, the style token and the set of instrument tokens."""
        v = self.vocab
        return [v.start, v.style(style), *sorted(v.instrument(f) for f in families if f in v.family_index)]

    def add(self, event: Event) -> list[int]:
        """Tokens for one event (possibly none); time never moves backwards."""
        if self.closed:
            raise RuntimeError("encoder already finished")
        tick = self.to_tick(event.time)
        if tick < self.tick:
            self.stats.late += 1
            tick = self.tick
        out = self.advance(tick)
        if isinstance(event, NoteOn):
            out += self._note_on(event)
        elif isinstance(event, NoteOff):
            out += self._note_off(event)
        elif isinstance(event, Pedal):
            fi = self.vocab.family_index.get(event.family)
            tok = None if fi is None else self.vocab.pedal(fi, event.down)
            if tok is not None and self._pedal.get(fi) != event.down:
                self._pedal[fi] = event.down
                out.append(tok)
        elif isinstance(event, Tempo):
            if self.cfg.time_mode == "beats":
                tok = self.vocab.tempo(event.bpm)
                if tok != self._tempo:
                    self._tempo = tok
                    out.append(tok)
        elif isinstance(event, TimeSignature):
            if self.cfg.time_mode == "beats":
                tok = self.vocab.timesig(event.numerator, event.denominator)
                if tok != self._timesig:
                    self._timesig = tok
                    out.append(tok)
        return out

    def _fit(self, family: str, pitch: int) -> tuple[int, int] | None:
        fi = self.vocab.family_index.get(family)
        if fi is None:
            return None
        p = fold_into_range(pitch, self.vocab.families[fi])
        if p is None:
            return None
        return fi, p

    def _note_on(self, ev: NoteOn) -> list[int]:
        fit = self._fit(ev.family, ev.pitch)
        if fit is None:
            self.stats.dropped += 1
            return []
        fi, pitch = fit
        if pitch != ev.pitch:
            self.stats.folded += 1
        vb = self.vocab.velocity_bin(ev.velocity)
        if not self.vocab.has_note_off(fi):
            return [self.vocab.note(fi, pitch, vb)]
        out: list[int] = []
        key = (fi, pitch)
        state = self._sounding.get(key)
        if state is not None:
            if state[0] == self.tick:  # unison strike at the same instant: one note
                self.stats.merged += 1
                state[1] += 1
                return out
            # Re-struck while sounding: release and strike again; it sounds until
            # the last of the overlapping releases.
            self._pending_offs = [p for p in self._pending_offs if (p[1], p[2]) != key]
            out.append(self.vocab.note(fi, pitch, 0))
            self._sounding[key] = [self.tick, state[1] + 1]
        else:
            self._sounding[key] = [self.tick, 1]
        out.append(self.vocab.note(fi, pitch, vb))
        return out

    def _note_off(self, ev: NoteOff) -> list[int]:
        fit = self._fit(ev.family, ev.pitch)
        if fit is None or not self.vocab.has_note_off(fit[0]):
            return []
        key = fit
        state = self._sounding.get(key)
        if state is None:
            self.stats.stray_offs += 1
            return []
        if state[1] > 1:
            state[1] -= 1
            return []
        if state[0] >= self.tick:  # shorter than one tick: release on the next tick
            if not any((p[1], p[2]) == key for p in self._pending_offs):
                self._pending_offs.append((state[0] + 1, *key))
            return []
        return self._release(*key)

    def _release(self, fi: int, pitch: int) -> list[int]:
        state = self._sounding.get((fi, pitch))
        if state is None:
            return []
        if state[1] > 1:
            state[1] -= 1
            return []
        del self._sounding[(fi, pitch)]
        return [self.vocab.note(fi, pitch, 0)]

    @property
    def sounding(self) -> list[tuple[str, int]]:
        """(family, pitch) of every note on whose note-off is not encoded yet."""
        return [(self.vocab.families[fi].name, p) for fi, p in self._sounding]

    def finish(self, time: float | None = None, end: bool = True) -> list[int]:
        """Release everything still sounding (at `time` or the next tick) and end."""
        tick = self.tick if time is None else max(self.to_tick(time), self.tick)
        out = self.advance(tick)
        if self._sounding:
            if any(s[0] >= self.tick for s in self._sounding.values()):
                out += self._wait_to(self.tick + 1)
            for fi, p in sorted(self._sounding):
                out.append(self.vocab.note(fi, p, 0))
            self._sounding.clear()
        self._pending_offs.clear()
        if end:
            out.append(self.vocab.end)
            self.closed = True
        return out


@dataclass
class DecodedPrefix:
    style: str | None = None
    families: list[str] = field(default_factory=list)


class StreamDecoder:
    """Turns tokens into timed events, one token at a time, always valid MIDI.

    Event times are in beats (beats mode) or seconds (seconds mode). A note-on for a key
    that is already sounding first releases it; a note-off for a silent key is dropped.
    """

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.cfg = vocab.config
        self.tick = 0
        self.prefix = DecodedPrefix()
        self.ended = False
        self._sounding: dict[tuple[int, int], int] = {}  # -> onset tick

    @property
    def time(self) -> float:
        """Current time in beats (beats mode) or seconds (seconds mode)."""
        if self.cfg.time_mode == "beats":
            return self.tick / self.cfg.ticks_per_beat
        return self.tick * self.cfg.wait_ms / 1000.0

    def _time_of(self, tick: int) -> float:
        if self.cfg.time_mode == "beats":
            return tick / self.cfg.ticks_per_beat
        return tick * self.cfg.wait_ms / 1000.0

    def feed(self, token: int) -> list[Event]:
        """Events the token produces (usually zero or one)."""
        v = self.vocab
        token = int(token)
        if not 0 <= token < len(v):
            raise ValueError(f"token {token} outside the vocabulary (size {len(v)})")
        kind = v.kind[token]
        if kind == WAIT:
            self.tick += int(v.value[token])
            return []
        if kind == NOTE:
            fi, pitch, vb = int(v.family[token]), int(v.pitch[token]), int(v.vbin[token])
            fam = v.families[fi].name
            t = self.time
            if not v.has_note_off(fi):  # one-shot drums: fixed length of one tick
                return [NoteOn(t, fam, pitch, v.bin_velocity(vb)), NoteOff(self._time_of(self.tick + 1), fam, pitch)]
            key = (fi, pitch)
            if vb == 0:
                if self._sounding.pop(key, None) is None:
                    return []
                return [NoteOff(t, fam, pitch)]
            out: list[Event] = []
            if key in self._sounding:
                out.append(NoteOff(t, fam, pitch))
            self._sounding[key] = self.tick
            out.append(NoteOn(t, fam, pitch, v.bin_velocity(vb)))
            return out
        if kind == PEDAL:
            return [Pedal(self.time, v.families[int(v.family[token])].name, bool(v.vbin[token]))]
        if kind == TEMPO:
            return [Tempo(self.time, float(v.value[token]))]
        if kind == TIMESIG:
            return [TimeSignature(self.time, int(v.pitch[token]), int(v.vbin[token]))]
        if kind == STYLE:
            self.prefix.style = v.styles[token - v.style_base]
        elif kind == INSTRUMENT:
            self.prefix.families.append(v.families[int(v.family[token])].name)
        elif kind == SPECIAL and v.names[token] == END:
            self.ended = True
        return []

    def feed_many(self, tokens) -> list[Event]:
        out: list[Event] = []
        for t in tokens:
            out += self.feed(t)
        return out

    @property
    def sounding(self) -> list[tuple[str, int]]:
        return [(self.vocab.families[fi].name, p) for fi, p in self._sounding]

    def close_all(self) -> list[Event]:
        """Note-offs for everything still sounding, at least one tick after its onset."""
        out = []
        for (fi, pitch), on in sorted(self._sounding.items()):
            out.append(NoteOff(self._time_of(max(self.tick, on + 1)), self.vocab.families[fi].name, pitch))
        self._sounding.clear()
        return out


def encode_events(piece: Piece, vocab: Vocabulary, until: float | None = None) -> tuple[list[int], EncoderStats]:
    """Body tokens of a piece (no prefix, no end token) and what had to change; `until`
    (beats): the body ends there, with a rest after the last note if it stops earlier."""
    enc = StreamEncoder(vocab, piece.tempo_map())
    out: list[int] = []
    for ev in piece.events():
        out += enc.add(ev)
    out += enc.finish(time=until, end=False)
    return out, enc.stats


def encode_piece(piece: Piece, vocab: Vocabulary) -> np.ndarray:
    """Prefix (start, style, instruments), body and end token, as int32 ids."""
    body, _ = encode_events(piece, vocab)
    enc = StreamEncoder(vocab)
    return np.array(enc.prefix(piece.style, piece.families) + body + [vocab.end], dtype=np.int32)


def decode_tokens(tokens, vocab: Vocabulary) -> Piece:
    """A Piece from tokens (with or without prefix); every note ends.

    Seconds-mode times become beats at 125 BPM, where a millisecond is exactly one tick
    of a 480-PPQ MIDI file, so the file plays them back at the encoded seconds.
    """
    dec = StreamDecoder(vocab)
    events = dec.feed_many(tokens)
    events += dec.close_all()
    if vocab.config.time_mode == "seconds":
        scale = SECONDS_MODE_BPM / 60.0
        events = [_scaled(e, scale) for e in events if not isinstance(e, (Tempo, TimeSignature))]
        events.insert(0, Tempo(0.0, SECONDS_MODE_BPM))
    notes = list(iter_notes(events))
    return Piece(
        notes=notes,
        pedals=[e for e in events if isinstance(e, Pedal)],
        tempos=[e for e in events if isinstance(e, Tempo)],
        time_signatures=[e for e in events if isinstance(e, TimeSignature)],
        style=dec.prefix.style,
    ).sorted()


def _scaled(e: Event, scale: float) -> Event:
    return type(e)(e.time * scale, *[getattr(e, f) for f in e.__slots__[1:]])  # type: ignore[attr-defined]
