"""Standard MIDI files <-> `Piece`, through mido.

Reading follows MIDI's own rules, not a track's good intentions: channels and their
programs are shared by all tracks, a note-on with velocity 0 is a note-off, and a key
struck twice is released first-in first-out. Whatever a file leaves sounding is closed
at its end, so nothing read from disk can hang a note later.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import mido
from mido.midifiles.meta import KeySignatureError

from musebridge.errors import MidiFileError
from musebridge.files import read_file_bytes, write_atomic

from .events import (MAX_REST_BEATS, REST_CYCLE_BEATS, Note, Pedal, Piece, Tempo, TimeSignature, cut_rest,
                     valid_time_signature)
from .families import DRUM_CHANNEL, FAMILIES, FAMILY_BY_NAME, family_for_program

OUTPUT_TICKS_PER_BEAT = 480  # divisible by 3, 4, 5, 8, 12, 16: every grid lands exactly
METADATA_PREFIX = "musebridge:"
# mido parses a dense file at ~0.3 MB/s (measured: 2 MB of notes, 500k events, 7 s and
# ~400 MB in all on one core); 4 MB is a million events, far past any performance, and
# stays ~15 s and under a GB -- a larger file would be minutes and gigabytes.
MAX_MIDI_BYTES = 4 * 2**20
MAX_DELTA_TICKS = 2**28 - 1  # the longest delta a MIDI file can hold (4 bytes of VLQ)
# What mido's parser raises on bad bytes (LookupError: KeyError, IndexError): a meta
# event too short for its type, an undefined status, a key of 127 sharps, ...
MIDO_PARSE_ERRORS = (OSError, ValueError, LookupError, TypeError, struct.error, KeySignatureError)


def read_midi(path: str | Path, style: str | None = None) -> Piece:
    """Read a .mid file into a Piece; any unreadable or malformed file raises MidiFileError."""
    path = Path(path)
    piece = midi_to_piece(_parse(path), source=str(path))
    piece.style = style
    piece.name = path.stem
    return piece


def _parse(path: Path) -> mido.MidiFile:
    """mido's parse of a plain file of bounded size (RIFF-wrapped RMID unwrapped), errors in one line."""
    data = _unwrap_riff(read_file_bytes(path, "MIDI file", MAX_MIDI_BYTES, MidiFileError))
    try:
        return mido.MidiFile(file=io.BytesIO(data), clip=True)
    except EOFError:
        raise MidiFileError(f"{path} is not a readable MIDI file (it ends early: truncated or empty); "
                            "re-export it from your DAW") from None
    except KeySignatureError as e:
        raise MidiFileError(f"{path} has an invalid key signature ({e}); re-export it from your DAW") from None
    except MIDO_PARSE_ERRORS as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MidiFileError(f"{path} is not a readable MIDI file ({why}); re-export it from your DAW") from None


def _unwrap_riff(data: bytes) -> bytes:
    """The SMF inside a RIFF RMID file (what Windows saves as .mid/.rmi); other bytes as they are."""
    if data[:4] != b"RIFF" or data[8:12] != b"RMID":
        return data
    pos = 12
    while pos + 8 <= len(data):  # each step moves on by >= 8 bytes: bounded by the file
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if data[pos:pos + 4] == b"data":
            return data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    return data


def _merged(tracks: list[mido.MidiTrack]) -> list[tuple[int, mido.Message]]:
    """(absolute tick, message) of all tracks in playback order, ties in track order.

    What `mido.merge_tracks` gives, without its two checked copies of every message
    (which cost ~30 s on a 2 MB file).
    """
    out: list[tuple[int, mido.Message]] = []
    for track in tracks:
        now = 0
        for msg in track:
            now += msg.time
            out.append((now, msg))
    out.sort(key=lambda e: e[0])
    return out


def midi_to_piece(mid: mido.MidiFile, source: str = "MIDI data") -> Piece:
    """Convert parsed MIDI (any type) into a Piece with times in beats.

    Rests longer than MAX_REST_BEATS are cut to it (so one 2**28-tick delta is not a
    piece of millions of beats, nor a note held that long); a tempo of 0 and a time
    signature that is not a bar (0/4, 4/128) are ignored, as a DAW would, so what came
    before them still holds.
    """
    tpb = mid.ticks_per_beat
    if not isinstance(tpb, int) or tpb <= 0:
        raise MidiFileError(f"{source} uses SMPTE or invalid timing (division {tpb}); export it with beats (PPQ) timing")
    rest = (MAX_REST_BEATS * tpb, REST_CYCLE_BEATS * tpb)
    programs = [0] * 16
    open_notes: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    notes: list[Note] = []
    pedals: list[Pedal] = []
    tempos: list[Tempo] = []
    timesigs: list[TimeSignature] = []
    pedal_down: dict[str, bool] = {}
    tick = 0  # the file's clock with long rests cut
    last = 0  # the file's own clock
    for at, msg in _merged(mid.tracks):
        tick += cut_rest(at - last, *rest)
        last = at
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
        elif kind == "set_tempo" and msg.tempo > 0:
            tempos.append(Tempo(t, mido.tempo2bpm(msg.tempo)))
        elif kind == "time_signature" and valid_time_signature(msg.numerator, msg.denominator):
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
        if tick - now > MAX_DELTA_TICKS:
            raise MidiFileError(f"the piece has a gap of {(tick - now) / OUTPUT_TICKS_PER_BEAT:.0f} beats, longer than "
                                "a MIDI file can hold; shorten it")
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def write_midi(piece: Piece, path: str | Path, metadata: dict | None = None) -> None:
    """Write a Piece as a .mid file (optionally with MuseBridge settings in a text event).

    Atomically: a full disk or a failure part-way leaves whatever file was at `path`
    as it was, and no partial file (jam --save, the app's export and generate all
    write through here).
    """
    try:
        mid = piece_to_midi(piece, metadata)
    except MidiFileError as e:
        raise MidiFileError(f"cannot write MIDI file {path}: {e}") from None
    write_atomic(path, mid.save, MidiFileError)


def read_metadata(path: str | Path) -> dict | None:
    """The MuseBridge settings a written file carries, if any (None if unreadable JSON)."""
    for track in _parse(Path(path)).tracks:
        for msg in track:
            if msg.type == "text" and msg.text.startswith(METADATA_PREFIX):
                try:
                    meta = json.loads(msg.text[len(METADATA_PREFIX):])
                except ValueError:
                    return None
                return meta if isinstance(meta, dict) else None
    return None
