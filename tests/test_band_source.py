"""POP909 arranged for a band (`pop909-band:`), on tiny POP909- and Groove-like folders
written here in the real formats (no dataset needed)."""

import json
import os
import subprocess
import sys

import mido
import numpy as np
import pytest

from musebridge.engine.data.band_parts import (ACCOMPANIMENT_FAMILIES, BASS_HIGH, BASS_LOW, BRIDGE_FAMILIES,
                                              LEAD_FAMILIES, band_families)
from musebridge.engine.data.band_source import read_band_song, song_rng
from musebridge.engine.data.pop909 import parse_chord
from musebridge.engine.data.data_build import build
from musebridge.engine.music.families import FAMILY_BY_NAME
from musebridge.engine.data.sources import load_piece, midi_folder_tasks, split_of, tasks_for_source
from musebridge.errors import DataError

TPB = 480
BPM = 100.0
FIRST_BEAT = 0.3  # seconds: the first annotated beat (a pickup), half a MIDI beat in
BARS = 8
# One chord per bar: (label, the bass pitch class it asks for); bar 7 has none ("N"),
# so the bass follows the accompaniment's lowest voice there (F, pitch class 5).
CHORDS = [("C:maj", 0), ("G:maj/3", 11), ("A:min", 9), ("F:maj", 5), ("C:maj", 0), ("G:7", 7), ("N", 5),
          ("C:maj", 0)]
GROOVE_HEADER = ("drummer,session,id,style,bpm,beat_type,time_signature,midi_filename,audio_filename,"
                 "duration,split\n")
# Which split's Groove beat played, by its hi-hat; what must never play marks its own:
# a fill 57, a jazz beat 51, a 3/4 beat 53, a beat at 180 BPM 56.
HATS = {"train": 42, "val": 44, "test": 59}
OPEN_EDGE = 26  # Groove's open hi-hat edge, below the GM map: played as an open hi-hat (46)


def beat_seconds(drift: float = 0.0) -> np.ndarray:
    """Annotated beats: 1 pickup + 4 per bar, optionally speeding up by `drift` s per beat."""
    gaps = 60.0 / BPM - drift * np.arange(1 + 4 * BARS)
    return FIRST_BEAT + np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def write_song(root, song: str, drift: float = 0.0):
    """A POP909-like song folder: NNN.mid (MELODY, BRIDGE, PIANO on channels 0-2, a
    constant tempo, POP909's odd 1/4 time signature) plus beat_midi.txt and chord_midi.txt."""
    folder = root / song
    folder.mkdir(parents=True)
    beats = beat_seconds(drift)

    def tick(s):
        return round(s * BPM / 60.0 * TPB)

    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(BPM)),
                           mido.MetaMessage("time_signature", numerator=1, denominator=4)])
    mid.tracks.append(meta)
    parts = {"MELODY": [], "BRIDGE": [], "PIANO": []}
    for j, s in enumerate(beats):  # the melody on every beat, pickup included
        parts["MELODY"].append((tick(s), tick(s) + 300, 72 + j % 5, 90))
    for b, (_, bass_pc) in enumerate(CHORDS):
        d = 1 + 4 * b
        bar_end = beats[d + 4] if d + 4 < len(beats) else beats[-1] + 60.0 / BPM
        parts["PIANO"].append((tick(beats[d]), tick(bar_end) - 40, 48 + bass_pc, 70))  # left hand, held
        for k in range(4):
            for p in (64, 67, 71):
                parts["PIANO"].append((tick(beats[d + k]), tick(beats[d + k]) + 300, p, 60))
        if b % 2:
            parts["BRIDGE"].append((tick(beats[d + 2]), tick(beats[d + 2]) + 200, 79, 80))
    for ch, (name, notes) in enumerate(parts.items()):
        evs = []
        for on, off, p, v in notes:
            evs += [(on, 1, mido.Message("note_on", channel=ch, note=p, velocity=v)),
                    (off, 0, mido.Message("note_off", channel=ch, note=p, velocity=0))]
        if name == "PIANO":
            for b in range(BARS):
                down, up = tick(beats[1 + 4 * b]) + 10, tick(beats[min(5 + 4 * b, len(beats) - 1)]) - 10
                evs += [(down, 2, mido.Message("control_change", channel=ch, control=64, value=127)),
                        (up, 2, mido.Message("control_change", channel=ch, control=64, value=0))]
        mid.tracks.append(_track(name, ch, evs))
    mid.save(folder / f"{song}.mid")
    rows = [f"{s} {1.0 if (j - 1) % 2 == 0 else 0.0} {1.0 if (j - 1) % 4 == 0 else 0.0}"
            for j, s in enumerate(beats)]
    (folder / "beat_midi.txt").write_text("\n".join(rows) + "\n")
    spans = [("N", 0.0, beats[1])]
    for b, (label, _) in enumerate(CHORDS):
        d = 1 + 4 * b
        spans.append((label, beats[d], beats[d + 4] if d + 4 < len(beats) else beats[-1] + 60.0 / BPM))
    (folder / "chord_midi.txt").write_text("".join(f"{a:.6f}\t{e:.6f}\t{label}\n" for label, a, e in spans))
    (folder / "key_audio.txt").write_text(f"0.0\t{beats[-1]}\tC:maj\n")
    return folder


def _track(name, channel, events):
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=name),
                            mido.Message("program_change", channel=channel, program=0)])
    now = 0
    for t, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=t - now))
        now = t
    return track


def write_groove_file(path, bpm: float, hat: int, phase: int = 1, bars: int = 6, marker: int | None = None):
    """A Groove-like drum performance on channel 10: `phase` beats of hi-hat before its first
    bar line, then bars of kick on 1 and 3, snare on 2 and 4, hats in 8ths (or `marker`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hits = [(h * 0.5, hat) for h in range(2 * phase)]
    for b in range(bars):
        t0 = phase + 4 * b
        hits += [(t0, 36), (t0 + 2, 36), (t0 + 1, 38), (t0 + 3, 38), (t0 + 3.5, OPEN_EDGE)]
        hits += [(t0 + h * 0.5, marker or hat) for h in range(8)]
    evs = []
    for t, p in hits:
        on = round(t * TPB)
        evs += [(on, 1, mido.Message("note_on", channel=9, note=p, velocity=100)),
                (on + 60, 0, mido.Message("note_off", channel=9, note=p, velocity=0))]
    mid = mido.MidiFile(type=0, ticks_per_beat=TPB)
    track = _track("drums", 9, evs)
    track.insert(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
    mid.tracks.append(track)
    mid.save(path)


def write_groove(root):
    """Groove-like folder: a rock beat at 104 BPM per split, plus what must never be picked."""
    rows = []

    def add(name, style, bpm, beat_type, ts, split, **kw):
        write_groove_file(root / "drummer1" / "s1" / name, bpm, **kw)
        rows.append(f"drummer1,drummer1/s1,drummer1/s1/{len(rows)},{style},{bpm:g},{beat_type},{ts},"
                    f"drummer1/s1/{name},,10.0,{split}\n")

    for split, hat in HATS.items():
        official = {"val": "validation"}.get(split, split)
        add(f"rock_{split}_104_beat_4-4.mid", "rock", 104, "beat", "4-4", official, hat=hat)
        add(f"jazz_{split}_100_beat_4-4.mid", "jazz/swing", 100, "beat", "4-4", official, hat=51)
        add(f"rock_{split}_100_fill_4-4.mid", "rock/fill", 100, "fill", "4-4", official, hat=57)
        add(f"pop_{split}_100_beat_3-4.mid", "pop", 100, "beat", "3-4", official, hat=53)
        add(f"funk_{split}_180_beat_4-4.mid", "funk", 180, "beat", "4-4", official, hat=56)
    (root / "info.csv").write_text(GROOVE_HEADER + "".join(rows))
    return root


@pytest.fixture
def datasets(tmp_path):
    """tmp/pop909/POP909/NNN/... (10 songs, one speeding up) and tmp/groove beside it."""
    pop = tmp_path / "pop909"
    for i in range(1, 11):
        write_song(pop / "POP909", f"{i:03d}", drift=0.004 if i == 2 else 0.0)
    groove = write_groove(tmp_path / "groove")
    return pop, groove


def _song(pop, song="001"):
    path = pop / "POP909" / song / f"{song}.mid"
    return path, f"{song}/{song}"


def _arranged(pop, groove, song="001", split="train"):
    path, sid = _song(pop, song)
    return read_band_song(path, sid, str(groove), split)


def test_parts_go_to_band_families_chosen_per_song(datasets):
    pop, groove = datasets
    piece = _arranged(pop, groove)
    fams = band_families(song_rng("001/001"))
    assert fams["MELODY"] in LEAD_FAMILIES and fams["BRIDGE"] in BRIDGE_FAMILIES
    assert fams["PIANO"] in ACCOMPANIMENT_FAMILIES and len(set(fams.values())) == 3
    assert set(piece.families) == {*fams.values(), "bass", "drums"}
    melody = sorted(n.start for n in piece.notes if n.family == fams["MELODY"])
    assert len(melody) == 1 + 4 * BARS  # every melody note, on the lead
    assert all(FAMILY_BY_NAME[n.family].low <= n.pitch <= FAMILY_BY_NAME[n.family].high for n in piece.notes)
    # the song is re-timed onto its annotated beats: each melody note on a whole beat,
    # even in the song whose beats speed up against its MIDI clock
    drifting = _arranged(pop, groove, "002")
    lead = band_families(song_rng("002/002"))["MELODY"]
    starts = np.array([n.start for n in drifting.notes if n.family == lead])
    assert np.allclose(starts, np.round(starts), atol=1 / TPB) and len(starts) == 1 + 4 * BARS
    # per song, not one band for all: 40 ids give several leads, always three families
    choices = [band_families(song_rng(f"{i:03d}/{i:03d}")) for i in range(40)]
    assert len({c["MELODY"] for c in choices}) >= 3 and all(len(set(c.values())) == 3 for c in choices)


def test_bass_plays_the_chords_bass_note_on_beats_in_range(datasets):
    pop, groove = datasets
    for song in ("001", "002", "003", "004"):
        piece = _arranged(pop, groove, song)
        bass = sorted((n for n in piece.notes if n.family == "bass"), key=lambda n: n.start)
        assert len(bass) >= 2 * BARS
        first_downbeat = min(n.start for n in piece.notes if n.family == "drums")
        assert first_downbeat % 4 == 0
        bar_of = {}
        for n in bass:
            assert n.start == round(n.start), "bass off the beat"
            bar = int(n.start - first_downbeat) // 4
            assert 0 <= bar < BARS
            assert FAMILY_BY_NAME["bass"].low <= n.pitch <= FAMILY_BY_NAME["bass"].high
            assert 40 <= n.velocity <= 120
            bar_of.setdefault(bar, []).append(n)
        for bar, notes in bar_of.items():
            pc = CHORDS[bar][1]
            first = notes[0]
            assert first.start == first_downbeat + 4 * bar, "a chord enters on its downbeat"
            assert first.pitch % 12 == pc, f"bar {bar}: {CHORDS[bar][0]} wants class {pc}, got {first.pitch}"
            assert BASS_LOW <= first.pitch <= BASS_HIGH and first.pitch < 48 + pc  # under the left hand
            for n in notes:  # the rest of the bar: its bass note, fifth or octave, under the chord
                assert (n.pitch - first.pitch) in (0, 7, 12), (bar, n.pitch, first.pitch)
                assert n.pitch < 48 + pc, f"bar {bar}: bass {n.pitch} not under the left hand {48 + pc}"
        assert len(bar_of) == BARS
        # in seconds: every bass onset sits on an annotated beat
        _on_annotated_beats(piece, [n.start for n in bass], song)


def _on_annotated_beats(piece, starts, song):
    tm = piece.tempo_map()
    lead = band_families(song_rng(f"{song}/{song}"))["MELODY"]
    anchor = min(n.start for n in piece.notes if n.family == lead)  # the pickup: annotated beat 0
    beats = beat_seconds(0.004 if song == "002" else 0.0)
    for t in starts:
        s = tm.to_seconds(t) - tm.to_seconds(anchor) + beats[0]
        assert np.min(np.abs(beats - s)) < 0.02, f"{t} beats is {s:.3f} s, not on an annotated beat"


def test_drums_follow_the_songs_bars_from_a_matching_groove_beat(datasets):
    pop, groove = datasets
    for song, split in (("001", "train"), ("003", "val"), ("004", "test"), ("002", "train")):
        piece = _arranged(pop, groove, song, split)
        drums = [n for n in piece.notes if n.family == "drums"]
        kicks = sorted(n.start for n in drums if n.pitch == 36)
        snares = sorted(n.start for n in drums if n.pitch == 38)
        assert {n.pitch for n in drums} == {36, 38, 46, HATS[split]}, "wrong split, fill, jazz, 3/4 or tempo"
        first = kicks[0]
        assert first % 4 == 0
        downbeats = [first + 4 * b for b in range(BARS)]
        assert set(downbeats) <= set(kicks), "a kick on beat 1 of every bar"
        assert set(kicks) == set(downbeats) | {d + 2 for d in downbeats}
        assert set(snares) == {d + k for d in downbeats for k in (1, 3)}
        _on_annotated_beats(piece, kicks + snares, song)


def test_no_drums_when_no_groove_beat_fits(datasets, tmp_path):
    """None near the song's tempo, or one too short to be a groove: no drums; a long one: drums."""
    pop, _ = datasets
    slow = tmp_path / "slow_groove"
    slow.mkdir()
    write_groove_file(slow / "d" / "a.mid", 60, hat=42)
    write_groove_file(slow / "d" / "b.mid", 100, hat=42, bars=2)  # the right tempo, 2 bars
    (slow / "info.csv").write_text(GROOVE_HEADER + "d,d,d/1,rock,60,beat,4-4,d/a.mid,,10,train\n"
                                   "d,d,d/2,rock,100,beat,4-4,d/b.mid,,10,train\n")
    path, sid = _song(pop)
    piece = read_band_song(path, sid, str(slow), "train")
    assert "drums" not in piece.families and "bass" in piece.families
    write_groove_file(slow / "d" / "b.mid", 100, hat=42, bars=6)
    assert "drums" in read_band_song(path, sid, str(slow), "train").families


def test_builds_are_deterministic_and_split_by_song(datasets, tmp_path):
    pop, _ = datasets
    spec = f"pop909-band:{pop}"  # Groove found beside it
    a = build([spec, str(pop)], tmp_path / "a", workers=1)
    b = build([spec, str(pop)], tmp_path / "b", workers=2)
    assert a.pieces == b.pieces == 20 and a.failed == 0
    for split in ("train", "val", "test"):
        name = f"{split}.bin"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    band = {p["id"].split("/")[-2]: p for p in man["pieces"] if p["source"] == "pop909_band"}
    piano = {p["id"].split("/")[-2]: p for p in man["pieces"] if p["source"] == "pop909"}
    assert len(band) == len(piano) == 10
    for song, p in band.items():
        assert p["split"] == piano[song]["split"] == split_of(p["group"]), "a song's versions share its split"
        assert p["group"] == piano[song]["group"] and p["style"] == "pop"
        assert "bass" in p["instruments"] and "drums" in p["instruments"]
    assert len({p["group"] for p in band.values()}) == 10
    # the band task's group is the plain folder source's, whatever the folder is called
    plain = {t.path: t.group for t in midi_folder_tasks(pop)}
    assert all(plain[t.path] == t.group for t in tasks_for_source(spec))
    # the same song arranged twice is the same piece
    t = tasks_for_source(spec)[0]
    assert load_piece(t) == load_piece(t)


def test_source_spec_label_groove_folder_and_errors(datasets, tmp_path):
    pop, groove = datasets
    tasks = tasks_for_source(f"pop909-band:{pop / 'POP909'},{groove}=Pop Band")
    assert len(tasks) == 10 and {t.style for t in tasks} == {"pop_band"}
    assert {t.drums for t in tasks} == {str(groove)}
    assert tasks[0].key == "pop909_band/001/001.mid"
    with pytest.raises(DataError, match="not a folder"):
        tasks_for_source(f"pop909-band:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="Groove"):
        tasks_for_source(f"pop909-band:{pop},{tmp_path / 'nope'}")
    lonely = tmp_path / "far" / "away" / "pop909"  # no groove beside it, nor one level up
    write_song(lonely, "001")
    with pytest.raises(DataError, match="GROOVE_DIR"):
        tasks_for_source(f"pop909-band:{lonely}")
    (tmp_path / "empty_groove").mkdir()
    with pytest.raises(DataError, match="info.csv"):
        tasks_for_source(f"pop909-band:{pop},{tmp_path / 'empty_groove'}")


def test_chord_labels():
    c = parse_chord("Bb:maj/5", 0.0, 1.0)
    assert (c.root, c.bass, c.fifth) == (10, 5, 7)
    assert parse_chord("C#:min/b3", 0, 1).bass == 4
    assert parse_chord("G:7/b7", 0, 1).bass == 5
    assert parse_chord("B:hdim7", 0, 1).fifth == 6 and parse_chord("Eb:aug", 0, 1).fifth == 8
    assert parse_chord("N", 0, 1).root is None
    for bad in ("H:maj", "C", "C:", "C:maj/x", ""):
        assert parse_chord(bad, 0, 1) is None, bad


def test_songs_with_missing_or_garbled_annotations_are_skipped_in_one_line(datasets, tmp_path):
    pop, _ = datasets
    songs = pop / "POP909"
    (songs / "003" / "chord_midi.txt").unlink()
    (songs / "004" / "beat_midi.txt").write_text("0.5 1.0 1.0\nthis is not a beat\n")
    text = (songs / "005" / "chord_midi.txt").read_text().replace("A:min", "Q:min")
    (songs / "005" / "chord_midi.txt").write_text(text)
    (songs / "006" / "beat_midi.txt").write_bytes(b"\xff\xfe\x00garbage")
    no_bars = "".join(f"{i * 0.6} 0.0 0.0\n" for i in range(20))
    (songs / "007" / "beat_midi.txt").write_text(no_bars)
    seen = []
    s = build([f"pop909-band:{pop}"], tmp_path / "d", workers=1, progress=lambda d, t, r: seen.append(r))
    assert s.pieces == 5 and s.failed == 5
    errors = {r.key.split("/")[-2]: r.error for r in seen if r.error}
    assert set(errors) == {"003", "004", "005", "006", "007"}
    assert "chord_midi.txt is missing" in errors["003"]
    assert "beat_midi.txt line 2" in errors["004"]
    assert "chord_midi.txt line" in errors["005"] and "Q:min" in errors["005"]
    assert "beat_midi.txt" in errors["006"] and "downbeats" in errors["007"]
    for e in errors.values():
        assert "\n" not in e and "Traceback" not in e and "Error:" not in e, e  # ours, not a stray exception
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert len(man["failed"]) == 5
    # and through the command: one 'skipped' line per song, exit 0
    cmd = [sys.executable, "-m", "musebridge", "data", "build", "--source", f"pop909-band:{pop}",
           "--out", str(tmp_path / "cli"), "--workers", "1"]
    env = {**os.environ, "COLUMNS": "400"}  # rich wraps at the console's width, inside words too
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert said.count("skipped pop909_band/") == 5
    assert "skipped pop909_band/POP909/003/003.mid: " in said and "chord_midi.txt is missing" in said


def test_pop909_piano_versions_are_read_on_their_annotated_bars(datasets, tmp_path):
    """POP909's files declare 1/4 time (617 of its 909 songs): read plainly, every beat was a
    bar. A song beside its beat annotations is read on them: 4/4, its downbeats on bar lines,
    its beats on whole beats -- and a cache built before is read again, not reused."""
    pop, _ = datasets
    tasks = midi_folder_tasks(pop)
    assert {t.kind for t in tasks} == {"pop909"}
    piece = load_piece(tasks[0])
    assert [(ts.numerator, ts.denominator) for ts in piece.time_signatures] == [(4, 4)]
    assert piece.families == ["piano"] and piece.pedals
    melody = sorted(n.start for n in piece.notes if 72 <= n.pitch <= 76)  # the melody: 72 + beat % 5
    assert melody[0] == 3.0 and melody[1] == 4.0  # the pickup, then the first downbeat on bar 2's line
    assert all(abs(t - round(t)) < 1e-6 for t in melody)  # one melody note per annotated beat
    assert len(melody) == 1 + 4 * BARS
    # a MIDI folder without annotations is read as the files say
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.mid").write_bytes((pop / "POP909" / "001" / "001.mid").read_bytes())
    assert [t.kind for t in midi_folder_tasks(plain)] == ["midi"]
    assert load_piece(midi_folder_tasks(plain)[0]).time_signatures[0].numerator == 1
    # a data folder cached before the reader was recorded reads its POP909 songs again
    out = tmp_path / "d"
    build([str(pop)], out, workers=1)
    chunk = next((out / ".cache").glob("chunk-*.npz"))
    with np.load(chunk) as z:
        arrays = dict(z)
    metas = json.loads(str(arrays["meta"]))
    for m in metas:
        m.pop("kind")
    arrays["meta"] = np.array(json.dumps(metas))
    np.savez(chunk, **arrays)
    assert build([str(pop)], out, workers=1).parsed_now == 10
    assert build([str(pop)], out, workers=1).parsed_now == 0
