"""POP909 songs as band arrangements: lead, bridge, accompaniment, bass and drums.

POP909 gives each song three piano tracks (MELODY, BRIDGE, PIANO) and, beside it, beat
and chord annotations aligned to the MIDI (`beat_midi.txt`: seconds, half-bar flag,
downbeat flag; `chord_midi.txt`: start and end seconds, Harte label such as `C:maj/5`).
`read_band_song` turns one song into a band:

- the song is re-timed onto its annotated beats (beat j is beat j + offset, the first
  downbeat on a multiple of 4, tempo events per bar), so bars, beat phase and the new
  parts share one exact grid;
- the three tracks (read with their annotations and grid in `pop909.py`) are voiced on band families chosen per song by an rng seeded from
  the song's id (`band_families`): the melody on a lead, the bridge on guitar, strings or
  a pad, the accompaniment on piano, organ or guitar, never two parts on one family;
- a bass follows the harmony (`bass_line`): the chord's bass note (its root, or the slash
  bass) on the beats, moving to the fifth or octave in one of a few per-song patterns,
  in the bass family's low register and under the accompaniment's lowest voice;
- drums come from a Groove MIDI beat performance (4/4, "beat" not "fill", a pop-like
  style, the nearest tempo, the same split as the song, at least MIN_GROOVE_BARS bars
  of groove): its bars are cut at its own bar
  lines and laid on the song's bars, so its beat 1 lands on the song's downbeat
  (hi-hat edge hits, keys 22 and 26, become GM hi-hats:
  `families.DRUM_KEY_ALIASES`); no Groove beat within
  `TEMPO_TOLERANCE` means no drums.

Missing or garbled annotations raise `DataError` (one line; the build counts the song
as skipped). Everything here is deterministic: the same files give the same piece.

The parts are made in `band_parts.py`; this module puts one song together.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..music.events import Note, Pedal, Piece
from .band_parts import activity, band_families, bass_line, drum_part, groove_index, pick_drums, voice_part
from .pop909 import TRACKS, Grid, Part, make_grid, read_beats, read_chords, read_parts

SOURCE = "pop909_band"  # collection name in keys and the manifest's "source"
SPEC_PREFIX = "pop909-band:"  # --source pop909-band:POP909_DIR[,GROOVE_DIR][=LABEL]
DEFAULT_LABEL = "pop"  # the shipped vocabulary's POP909 label: see `band_tasks`


def song_rng(song_id: str) -> np.random.Generator:
    """The one rng of a song's arrangement: seeded from its id, never from the path."""
    seed = int.from_bytes(hashlib.sha1(f"{SOURCE}/{song_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------
# One song


def read_band_song(midi_path: str | Path, song_id: str, groove_folder: str | None, split: str,
                   style: str = DEFAULT_LABEL) -> Piece:
    """One POP909 song as a band arrangement (see the module's docstring)."""
    path = Path(midi_path)
    beats, parts, grid = _song_on_grid(path)
    chords = read_chords(path.parent / "chord_midi.txt")
    rng = song_rng(song_id)
    families = band_families(rng)
    notes: list[Note] = []
    pedals: list[Pedal] = []
    for track in TRACKS:
        if track not in parts:
            continue
        fam = families[track]
        ns, ps = voice_part(parts[track], fam, grid, keep_pedal=fam == "piano",
                            sustain=track != "MELODY" and fam != "piano")
        notes += ns
        pedals += ps
    length = math.ceil(max(n.end for n in notes)) + 1 if notes else 1
    length = max(length, len(beats) + grid.offset + 1)
    active = activity(notes, length)
    accompaniment = [n for n in notes if n.family == families["PIANO"]]
    notes += bass_line(chords, grid, accompaniment, active, rng)
    if groove_folder:
        bpm = float(60.0 / np.median(np.diff(beats)))
        _, bars = pick_drums(groove_index(str(groove_folder)), bpm, split, rng)
        notes += drum_part(bars, grid, active, rng)
    return Piece(notes=notes, pedals=pedals, tempos=grid.tempos(), time_signatures=grid.time_signatures(),
                 style=style, name=song_id).sorted()



def read_piano_song(midi_path: str | Path, style: str = DEFAULT_LABEL) -> Piece:
    """One POP909 song as POP909 wrote it -- its three tracks on piano, pedal kept -- re-timed
    on its annotated beats.

    Read as plain MIDI, POP909's files give the wrong bars: 617 of the 909 declare 1/4 time
    and 21 declare 2/4, whatever the song's metre, so every beat was a bar line to the
    tokens and the bar-position embeddings, and the continuation benchmark's "4 bars" of a
    POP909 prompt were 4 beats. Its `beat_midi.txt` marks the real downbeats; the band
    arrangement of the same song sits on the same grid."""
    _, parts, grid = _song_on_grid(Path(midi_path))
    notes: list[Note] = []
    pedals: list[Pedal] = []
    for track in TRACKS:
        if track in parts:
            ns, ps = voice_part(parts[track], "piano", grid, keep_pedal=True, sustain=False)
            notes += ns
            pedals += ps
    return Piece(notes=notes, pedals=pedals, tempos=grid.tempos(), time_signatures=grid.time_signatures(),
                 style=style).sorted()


def _song_on_grid(path: Path) -> tuple[np.ndarray, dict[str, Part], Grid]:
    """A POP909 song's annotated beats, its three tracks (seconds) and the grid between them."""
    beats, down = read_beats(path.parent / "beat_midi.txt")
    parts = read_parts(path)
    earliest = min((n[0] for p in parts.values() for n in p.notes), default=float(beats[0]))
    return beats, parts, make_grid(beats, down, min(earliest, float(beats[0])))


def find_groove(root: Path) -> Path | None:
    """The Groove folder beside a POP909 folder (the shared datasets' layout), if any."""
    for up in (root.parent, root.parent.parent):
        if (up / "groove" / "info.csv").is_file():
            return up / "groove"
    return None
