"""Standard MIDI files <-> `Piece`, through mido.

Reading follows MIDI's own rules, not a track's good intentions: channels and their
programs are shared by all tracks, a note-on with velocity 0 is a note-off, and a key
struck twice is released first-in first-out. Whatever a file leaves sounding is closed
at its end, so nothing read from disk can hang a note later.
"""

from __future__ import annotations

import json
from pathlib import Path

import mido

from musebridge.errors import MidiFileError

from .events import Note, Pedal, Piece, Tempo, TimeSignature
from .families import DRUM_CHANNEL, FAMILIES, FAMILY_BY_NAME, family_for_program

OUTPUT_TICKS_PER_BEAT = 480  # divisible by 3, 4, 5, 8, 12, 16: every grid lands exactly
METADATA_PREFIX = "musebridge:"


def read_midi(path: str | Path, style: str | None = None) -> Piece:
    """Read a .mid file into a Piece; any malformed file raises MidiFileError."""
    path = Path(path)
    try:
        mid = mido.MidiFile(path, clip=True)
    except FileNotFoundError:
        raise MidiFileError(f"MIDI file {path} not found") from None
    except EOFError:
        raise MidiFileError(f"{path} is not a readable MIDI file (it ends early: truncated or empty); "
                            "re-export it from your DAW") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MidiFileError(f"{path} is not a readable MIDI file ({why}); re-export it from your DAW") from None
    piece = midi_to_piece(mid, source=str(path))
    piece.style = style
    piece.name = path.stem
    return piece


def midi_to_piece(mid: mido.MidiFile, source: str = "MIDI data") -> Piece:
    """Convert parsed MIDI (any type) into a Piece with times in beats."""
    tpb = mid.ticks_per_beat
    if not isinstance(tpb, int) or tpb <= 0:
        raise MidiFileError(f"{source} uses SMPTE or invalid timing (division {tpb}); export it with beats (PPQ) timing")
    programs = [0] * 16
    open_notes: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    notes: list[Note] = []
    pedals: list[Pedal] = []
    tempos: list[Tempo] = []
    timesigs: list[TimeSignature] = []
    pedal_down: dict[str, bool] = {}
    tick = 0
    try:
        merged = mido.merge_tracks(mid.tracks)
    except (TypeError, ValueError) as e:
        raise MidiFileError(f"{source} has malformed tracks ({e}); re-export it") from None
    for msg in merged:
        tick += msg.time
        t = tick / tpb
        kind = msg.type
        if kind == "note_on" and msg.velocity > 0:
            fam = family_for_program(programs[msg.channel], msg.channel).name
            open_notes.setdefault((msg.channel, msg.note), []).append((tick, msg.velocity, fam))
        elif kind in ("note_off", "note_on"):
            stack = open_notes.get((msg.channel, msg.note))
            if stack:
                on_tick, vel, fam = stack.pop(0)
                notes.append(Note(on_tick / tpb, (tick - on_tick) / tpb, msg.note, vel, fam))
        elif kind == "program_change":
            programs[msg.channel] = msg.program
        elif kind == "control_change" and msg.control == 64:
            fam = family_for_program(programs[msg.channel], msg.channel).name
            down = msg.value >= 64
            if pedal_down.get(fam) != down:
                pedal_down[fam] = down
                pedals.append(Pedal(t, fam, down))
        elif kind == "set_tempo":
            tempos.append(Tempo(t, mido.tempo2bpm(msg.tempo)))
        elif kind == "time_signature":
            timesigs.append(TimeSignature(t, msg.numerator, msg.denominator))
    for (channel, pitch), stack in open_notes.items():
        for on_tick, vel, fam in stack:
            notes.append(Note(on_tick / tpb, (tick - on_tick) / tpb, pitch, vel, fam))
    return Piece(notes=notes, pedals=pedals, tempos=tempos, time_signatures=timesigs).sorted()


def family_channels(families: list[str]) -> dict[str, int]:
    """One MIDI channel per family: drums on GM channel 10, the rest in order, skipping it."""
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    out: dict[str, int] = {}
    for name in families:
        out[name] = DRUM_CHANNEL if FAMILY_BY_NAME[name].is_drums else free.pop(0)
    return out


def piece_to_midi(piece: Piece, metadata: dict | None = None) -> mido.MidiFile:
    """A type-1 file: a tempo track, then one track per family with its GM program."""
    tpb = OUTPUT_TICKS_PER_BEAT
    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)

    def ticks(beats: float) -> int:
        return max(round(beats * tpb), 0)

    meta: list[tuple[int, int, mido.MetaMessage]] = []
    if piece.name:
        meta.append((0, 0, mido.MetaMessage("track_name", name=piece.name[:120])))
    if metadata:
        text = METADATA_PREFIX + json.dumps(metadata, sort_keys=True, separators=(",", ":"))
        meta.append((0, 0, mido.MetaMessage("text", text=text)))
    for ts in piece.time_signatures:
        meta.append((ticks(ts.time), 1, mido.MetaMessage("time_signature", numerator=ts.numerator, denominator=ts.denominator)))
    for tp in piece.tempos:
        meta.append((ticks(tp.time), 1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tp.bpm))))
    mid.tracks.append(_track(meta))

    order = [f.name for f in FAMILIES]
    present = sorted({n.family for n in piece.notes} | {p.family for p in piece.pedals}, key=order.index)
    channels = family_channels(present)
    for fam in present:
        ch = channels[fam]
        f = FAMILY_BY_NAME[fam]
        evs: list[tuple[int, int, mido.Message]] = [(0, -1, mido.MetaMessage("track_name", name=fam))]
        if not f.is_drums:
            evs.append((0, 0, mido.Message("program_change", channel=ch, program=f.program)))
        for n in piece.notes:
            if n.family == fam:
                on, off = ticks(n.start), max(ticks(n.end), ticks(n.start) + 1)
                vel = min(max(int(n.velocity), 1), 127)
                evs.append((on, 3, mido.Message("note_on", channel=ch, note=n.pitch, velocity=vel)))
                evs.append((off, 1, mido.Message("note_off", channel=ch, note=n.pitch, velocity=0)))
        for p in piece.pedals:
            if p.family == fam:
                evs.append((ticks(p.time), 2, mido.Message("control_change", channel=ch, control=64, value=127 if p.down else 0)))
        mid.tracks.append(_track(evs))
    return mid


def _track(events: list[tuple[int, int, mido.Message]]) -> mido.MidiTrack:
    """Events (tick, order-within-tick, message) as a track with delta times."""
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def write_midi(piece: Piece, path: str | Path, metadata: dict | None = None) -> None:
    """Write a Piece as a .mid file (optionally with MuseBridge settings in a text event)."""
    try:
        piece_to_midi(piece, metadata).save(path)
    except OSError as e:
        raise MidiFileError(f"cannot write MIDI file {path} ({e.strerror or e}); choose a writable folder") from None


def read_metadata(path: str | Path) -> dict | None:
    """The MuseBridge settings a written file carries, if any."""
    mid = mido.MidiFile(path)
    for track in mid.tracks:
        for msg in track:
            if msg.type == "text" and msg.text.startswith(METADATA_PREFIX):
                return json.loads(msg.text[len(METADATA_PREFIX):])
    return None
