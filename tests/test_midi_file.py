"""MIDI files the tests write -> events -> tokens -> events -> MIDI."""

import mido
import pytest

from conftest import assert_round_trip, write_test_midi
from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.families import family_for_program
from musebridge.engine.music.midi_file import read_metadata, read_midi, write_midi
from musebridge.engine.music.tokenizer import decode_tokens, encode_piece
from musebridge.engine.music.vocab import VocabConfig, Vocabulary
from musebridge.errors import MidiFileError


def test_reader_sees_every_note(tmp_path):
    truth = write_test_midi(tmp_path / "in.mid")
    piece = read_midi(tmp_path / "in.mid")
    got = sorted((n.family, n.pitch, round(n.start, 6), round(n.end, 6), n.velocity) for n in piece.notes)
    want = sorted((family_for_program(prog, ch).name, p, round(s, 6), round(e, 6), v)
                  for ch, prog, p, s, e, v in truth)
    # ticks_per_beat 96 holds thirds exactly up to rounding
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and g[4] == w[4]
        assert abs(g[2] - w[2]) < 1 / 96 and abs(g[3] - w[3]) < 1 / 96
    assert [round(t.bpm) for t in piece.tempos] == [100, 132]
    assert [(t.numerator, t.time) for t in piece.time_signatures] == [(4, 0), (3, 8)]
    assert [(p.family, p.down) for p in piece.pedals] == [("ensemble", True), ("ensemble", False)]
    assert piece.families == ["piano", "bass", "ensemble", "drums"]


@pytest.mark.parametrize("config", [VocabConfig(), VocabConfig(ticks_per_beat=4), VocabConfig(time_mode="seconds")],
                         ids=["beats12", "beats4", "seconds"])
def test_midi_round_trip(tmp_path, config):
    vocab = Vocabulary(config)
    write_test_midi(tmp_path / "in.mid")
    original = read_midi(tmp_path / "in.mid")
    decoded = decode_tokens(encode_piece(original, vocab), vocab)
    write_midi(decoded, tmp_path / "out.mid")
    again = read_midi(tmp_path / "out.mid")
    assert_round_trip(original, again, vocab)
    assert len(again.notes) == len(original.notes)


def test_written_file_has_programs_channels_and_metadata(tmp_path):
    piece = Piece(notes=[Note(0, 1, 60, 100, "piano"), Note(0, 1, 40, 90, "bass"), Note(0, 0.5, 36, 120, "drums")])
    write_midi(piece, tmp_path / "c.mid", metadata={"seed": 7, "temperature": 0.9})
    mid = mido.MidiFile(tmp_path / "c.mid")
    progs = {m.channel: m.program for t in mid.tracks for m in t if m.type == "program_change"}
    chans = {m.channel for t in mid.tracks for m in t if m.type == "note_on"}
    assert progs == {0: 0, 1: 33} and chans == {0, 1, 9}
    assert read_metadata(tmp_path / "c.mid") == {"seed": 7, "temperature": 0.9}


def test_notes_left_on_are_closed_at_the_end(tmp_path):
    mid = mido.MidiFile(ticks_per_beat=4)
    t = mido.MidiTrack()
    t += [mido.Message("note_on", note=60, velocity=90, time=0), mido.Message("note_on", note=64, velocity=90, time=8),
          mido.Message("note_off", note=64, time=4)]
    mid.tracks.append(t)
    mid.save(tmp_path / "hang.mid")
    p = read_midi(tmp_path / "hang.mid")
    assert sorted((n.pitch, n.start, n.end) for n in p.notes) == [(60, 0, 3), (64, 2, 3)]


@pytest.mark.parametrize("content", [b"", b"MThd", b"garbage" * 50, b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x00\x60MTrk\xff\xff\xff\xff"])
def test_malformed_files_raise_one_clear_error(tmp_path, content):
    p = tmp_path / "bad.mid"
    p.write_bytes(content)
    with pytest.raises(MidiFileError, match="bad.mid") as e:
        read_midi(p)
    why = str(e.value).split("(", 1)[1].split(")", 1)[0]
    assert why.strip() and len(str(e.value).splitlines()) == 1  # says what is wrong, on one line


def test_missing_file(tmp_path):
    with pytest.raises(MidiFileError, match="not found"):
        read_midi(tmp_path / "nope.mid")


# --- hostile files: each a regression test for a failure a user hit -------------------------

from musebridge.engine.music.fuzz_files import END, meta, smf, vlq  # noqa: E402

NOTE = vlq(0) + b"\x90\x3c\x40" + vlq(96) + b"\x80\x3c\x40"  # one beat of middle C


def _write(tmp_path, data: bytes, name: str = "in.mid"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _one_line_error(path, match: str) -> str:
    with pytest.raises(MidiFileError, match=match) as e:
        read_midi(path)
    assert len(str(e.value).splitlines()) == 1 and str(path) in str(e.value)
    return str(e.value)


def test_huge_delta_times_stay_bounded_in_a_subprocess(tmp_path):
    """An 81-byte file with FF FF FF 7F before each event once grew `generate` by ~16 MB/s
    without end (a wait token per 4 beats of a 268-million-beat gap). Now rests are cut
    to MAX_REST_BEATS when read and when encoded: few tokens, little memory, fast."""
    import subprocess
    import sys

    big = b"\xff\xff\xff\x7f"
    events = [big + b"\x90\x3c\x40", big + b"\x80\x3c\x40"] * 3 + [big + b"\x90\x40\x40", big + b"\xff\x2f\x00"]
    path = _write(tmp_path, smf([b"".join(events)], fmt=0, division=1))
    assert len(path.read_bytes()) < 100
    code = f"""
import resource, sys, time, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from musebridge.engine.music.midi_file import read_midi
from musebridge.engine.music.tokenizer import encode_piece
from musebridge.engine.music.vocab import VocabConfig, Vocabulary
tracemalloc.start()
t0 = time.monotonic()
piece = read_midi({str(path)!r})
sizes = [len(encode_piece(piece, Vocabulary(c))) for c in (VocabConfig(), VocabConfig(time_mode="seconds"))]
print(len(piece.notes), piece.end, max(n.duration for n in piece.notes), max(sizes),
      tracemalloc.get_traced_memory()[1], time.monotonic() - t0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    notes, end, longest, tokens, peak, seconds = r.stdout.split()
    assert int(notes) == 4  # three notes and the one left on, closed at the end
    assert float(end) <= 9 * 16 and float(longest) <= 16  # every 268M-beat rest cut to 16 beats
    assert int(tokens) < 200 and int(peak) < 50e6 and float(seconds) < 30


def test_the_live_encoder_cuts_a_long_silence_but_keeps_song_time():
    """A player silent for a million beats: a handful of wait tokens, and the encoder's
    clock (the jam's song position) is still the true beat."""
    from musebridge.engine.music.events import MAX_REST_BEATS, NoteOff, NoteOn
    from musebridge.engine.music.tokenizer import StreamEncoder
    from musebridge.engine.music.vocab import WAIT

    vocab = Vocabulary()
    enc = StreamEncoder(vocab)
    enc.add(NoteOn(0.0, "piano", 60, 90))
    enc.add(NoteOff(1.0, "piano", 60))
    toks = enc.add(NoteOn(1_000_001.0, "piano", 62, 90))
    waits = [t for t in toks if vocab.kind[t] == WAIT]
    assert 1 <= len(waits) <= MAX_REST_BEATS // vocab.config.max_wait_beats + 1
    assert sum(int(vocab.value[t]) for t in waits) <= MAX_REST_BEATS * vocab.config.ticks_per_beat
    assert enc.tick == 1_000_001 * vocab.config.ticks_per_beat
    assert len(enc.advance(enc.tick + 10**9)) <= MAX_REST_BEATS  # advance alone is bounded too


def test_rests_within_the_limit_are_kept_exactly(tmp_path):
    p = _write(tmp_path, smf([vlq(96 * 12) + b"\x90\x3c\x40" + vlq(96 * 15) + b"\x80\x3c\x40" + END]))
    assert [(n.start, n.duration) for n in read_midi(p).notes] == [(12.0, 15.0)]
    # 40.25 beats of silence: cut by whole 4-beat cycles to at most 16, so the beat keeps its phase
    p = _write(tmp_path, smf([NOTE + vlq(96 * 40 + 24) + b"\x90\x3e\x40" + vlq(96) + b"\x80\x3e\x40" + END]))
    assert [n.start for n in read_midi(p).notes] == [0.0, 1 + 12.25]  # 40.25 - 7 * 4


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "socket"])
def test_special_files_get_one_line_and_are_never_opened_blocking(tmp_path, kind):
    """A FIFO as --prompt blocked forever in open(); now every non-regular file is
    refused from its stat, in one line."""
    import os
    import socket
    import threading

    path = tmp_path / f"{kind}.mid"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    else:
        path = __import__("pathlib").Path("/dev/zero")
    result = {}

    def read():
        try:
            read_midi(path)
        except MidiFileError as e:
            result["error"] = str(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive() and kind == "fifo":  # unblock the reader before failing
        with open(path, "wb"):
            pass
    assert not t.is_alive(), f"read_midi blocked on a {kind}"
    why = {"fifo": "named pipe", "folder": "folder", "device": "device", "socket": "socket"}[kind]
    assert why in result.get("error", "") and len(result["error"].splitlines()) == 1


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    from musebridge.engine.music.midi_file import MAX_MIDI_BYTES

    p = tmp_path / "huge.mid"
    with open(p, "wb") as f:
        f.write(smf([NOTE + END]))
        f.truncate(MAX_MIDI_BYTES + 1)  # sparse: no disk used
    _one_line_error(p, "over the .* limit")


def test_tempo_zero_is_ignored_and_the_file_read(tmp_path):
    """`FF 51 03 00 00 00` was "unexpected ZeroDivisionError"; a DAW reads such a file."""
    p = _write(tmp_path, smf([meta(0x51, b"\x00\x00\x00") + NOTE + meta(0x51, (600000).to_bytes(3, "big")) + NOTE + END]))
    piece = read_midi(p)
    assert len(piece.notes) == 2 and [(t.time, round(t.bpm)) for t in piece.tempos] == [(1.0, 100)]


@pytest.mark.parametrize("event, why", [
    (meta(0x59, b"\x7f\x05"), "key signature"),  # was "unexpected KeySignatureError"
    (meta(0x51, b""), "readable"),  # a tempo with no bytes (IndexError inside mido)
    (meta(0x54, b"\xe0\x00\x00\x00\x00"), "readable"),  # an SMPTE frame-rate code mido has no name for (KeyError)
    (meta(0x00, b"\x01"), "readable"),  # a one-byte sequence number
    (vlq(0) + b"\xf4", "readable"),  # an undefined status byte
    (vlq(0) + b"\x3c\x40", "readable"),  # running status with no status before it
])
def test_every_mido_parse_error_is_one_line(tmp_path, event, why):
    _one_line_error(_write(tmp_path, smf([event + NOTE + END])), why)


@pytest.mark.parametrize("ts", [b"\x00\x02\x18\x08", b"\x04\x07\x18\x08", b"\x04\xff\x18\x08", b"\x21\x02\x18\x08"],
                         ids=["0/4", "4/128", "4/2**255", "33/4"])
def test_invalid_time_signatures_are_ignored(tmp_path, ts):
    """0/4 or 4/128 made `generate` write "0 notes over 0.0 beats": its bars had no length.
    They are ignored, so the previous valid signature (or none: 4/4) holds."""
    p = _write(tmp_path, smf([meta(0x58, b"\x03\x02\x18\x08") + NOTE + meta(0x58, ts) + NOTE + END]))
    piece = read_midi(p)
    assert [(t.numerator, t.denominator) for t in piece.time_signatures] == [(3, 4)] and len(piece.notes) == 2
    assert read_midi(_write(tmp_path, smf([meta(0x58, ts) + NOTE + END]), "alone.mid")).time_signatures == []


def test_riff_wrapped_midi_reads_like_the_midi_inside(tmp_path):
    import struct

    inner = smf([NOTE + NOTE + END])
    rmid = b"RIFF" + struct.pack("<I", len(inner) + 12) + b"RMID" + b"data" + struct.pack("<I", len(inner)) + inner
    assert [(n.start, n.pitch) for n in read_midi(_write(tmp_path, rmid)).notes] == [(0.0, 60), (1.0, 60)]


# --- writing: atomically, never half a file, never the old file destroyed --------------------

def _piece(n: int = 8) -> Piece:
    return Piece(notes=[Note(i * 0.5, 0.5, 40 + i % 40, 90, "piano") for i in range(n)])


def test_a_write_that_fails_part_way_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "clip.mid"
    write_midi(_piece(), target)
    good = target.read_bytes()

    def failing_save(self, filename=None, file=None):
        with open(filename, "wb") as f:
            f.write(b"MThd\x00\x00")  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mido.MidiFile, "save", failing_save)
    with pytest.raises(MidiFileError, match="No space left.*free some disk space") as e:
        write_midi(_piece(20), target)
    assert len(str(e.value).splitlines()) == 1
    assert target.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mid"]

    from musebridge.bridge.clips import Clip  # jam --save and the app's export write through here

    clip = Clip(label="#1", piece=_piece(), bars=2, bpm=120)
    with pytest.raises(MidiFileError):
        clip.export(target)
    assert target.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mid"]


def test_a_full_disk_leaves_the_old_file_intact(tmp_path):
    """A real short write (RLIMIT_FSIZE in a child: the kernel refuses bytes past 4 KB)."""
    import subprocess
    import sys

    target = tmp_path / "clip.mid"
    write_midi(_piece(), target)
    good = target.read_bytes()
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as a full disk gives ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from musebridge.engine.music.events import Note, Piece
from musebridge.engine.music.midi_file import write_midi
from musebridge.errors import MidiFileError
try:
    write_midi(Piece(notes=[Note(i * 0.25, 0.25, 40 + i % 40, 90, "piano") for i in range(2000)]), {str(target)!r})
except MidiFileError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cannot write" in r.stdout and "free some disk space" in r.stdout, (r.stdout, r.stderr)
    assert target.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mid"]


def test_writing_over_a_special_file_is_refused(tmp_path):
    import os

    fifo = tmp_path / "out.mid"
    os.mkfifo(fifo)
    with pytest.raises(MidiFileError, match="named pipe"):
        write_midi(_piece(), fifo)
    assert fifo.is_fifo()


def test_a_piece_longer_than_midi_can_hold_is_a_clear_error(tmp_path):
    with pytest.raises(MidiFileError, match="longer than a MIDI file can hold"):
        write_midi(Piece(notes=[Note(0, 1, 60, 90, "piano"), Note(1e6, 1, 60, 90, "piano")]), tmp_path / "x.mid")
    assert not list(tmp_path.iterdir())


def test_ekit_hihat_edge_keys_are_heard_as_hihats(tmp_path):
    """Groove's Roland kit (and a drummer's e-kit) sends hi-hat edge hits on keys 22 and 26,
    below the GM map; they are the closed and open hi-hat, not noise to drop."""
    mid = mido.MidiFile(ticks_per_beat=96)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    for key in (22, 26, 36):
        tr.append(mido.Message("note_on", channel=9, note=key, velocity=90, time=0))
        tr.append(mido.Message("note_off", channel=9, note=key, velocity=0, time=48))
    mid.save(tmp_path / "ekit.mid")
    vocab = Vocabulary(VocabConfig())
    decoded = decode_tokens(encode_piece(read_midi(tmp_path / "ekit.mid"), vocab), vocab)
    assert [(n.family, n.pitch) for n in decoded.notes] == [("drums", 42), ("drums", 46), ("drums", 36)]
