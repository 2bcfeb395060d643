"""MIDI files the tests write -> events -> tokens -> events -> MIDI."""

import mido
import pytest

from conftest import assert_round_trip, write_test_midi
from musebridge.engine.events import Note, Piece
from musebridge.engine.families import family_for_program
from musebridge.engine.midi_file import read_metadata, read_midi, write_midi
from musebridge.engine.tokenizer import decode_tokens, encode_piece
from musebridge.engine.vocab import VocabConfig, Vocabulary
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
