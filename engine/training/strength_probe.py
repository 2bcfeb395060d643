"""Do the instrument strengths bring a part in? `python -m musebridge.engine.training.strength_probe`

MuseNet's instrument tokens were "strong suggestions"; ours are strengths 0..1. A
producer who plays a piano phrase and pushes bass (or drums) to 1 expects a bass part
(or a beat) to join, fitting what was played. For piano-only prompts from a data
folder's test split (or a built-in C-major phrase when none is given), each seed plays
4 bars with one family at strength 1, and the probe counts:

* bass: seeds whose answer has a bass part (at least `MIN_PART_NOTES` bass notes), and
  the share of those notes in the prompt's key (Krumhansl-Schmuckler, as the
  continuation benchmark estimates it);
* drums: seeds whose answer has drums, and the share of drum onsets on the prompt's
  grid (straight, swung or triplet, estimated from the prompt).

The targets (issue: band data and a stronger model): a part in at least 3 of 4 seeds,
bass at least 80 % in key, drums on the grid.
"""

from __future__ import annotations

import argparse
import json
import math

from ..decode.backends import open_runtime
from ..decode.continuation_bench import cases_from_split
from ..decode.generate import generate
from ..decode.presence import JOINED_REGISTER
from ..decode.sampling import SamplingControls
from ..music.events import Note, Piece, Tempo, TimeSignature
from ..music.music_metrics import estimate_grid, estimate_key, in_scale_share, on_grid_share

SEEDS = 4
BARS = 4
MIN_PART_NOTES = 4  # fewer notes of the family is a stray note, not a part joining in
TARGET_SEEDS = 3
TARGET_BASS_IN_KEY = 0.8


def c_major_phrase() -> Piece:
    """Two bars of I-vi-IV-V on piano, chords on the beat and a melody: the phrase a
    producer would play to try the sliders when no data folder is at hand."""
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    melody = [72, 76, 74, 72, 69, 72, 71, 74]
    notes = [Note(float(i), 1.0, p, 70, "piano") for i, ch in enumerate(chords) for p in ch]
    notes += [Note(4.0 + i, 1.0, p, 70, "piano") for i, ch in enumerate(chords) for p in ch]
    notes += [Note(0.5 * i * 2, 0.9, p, 90, "piano") for i, p in enumerate(melody)]
    return Piece(notes=notes, tempos=[Tempo(0.0, 100.0)], time_signatures=[TimeSignature(0.0, 4, 4)]).sorted()


def piano_prompts(data: str | None, limit: int) -> list[tuple[str, Piece]]:
    """Piano-only prompts of the test split, or the built-in phrase."""
    if data is None:
        return [("c_major_phrase", c_major_phrase())]
    out = []
    for case in cases_from_split(data, "test", prompt_bars=4, answer_bars=BARS):
        if case.prompt.families == ["piano"]:
            out.append((case.name, case.prompt))
        if len(out) >= limit:
            break
    return out


def probe_prompt(runtime, prompt: Piece, family: str, seeds: int = SEEDS) -> dict:
    """One prompt: for each seed, does `family` at strength 1 bring a part, and does it fit?"""
    key, grid = estimate_key(prompt.notes), estimate_grid(prompt.notes)
    bar = 4.0
    prompt_end = max(math.ceil(max(n.end for n in prompt.notes) / bar - 1e-9) * bar, bar)
    rows = []
    for seed in range(seeds):
        controls = SamplingControls(seed=seed, strengths={family: 1.0})
        clip = generate(runtime, prompt, BARS, controls, prompt.style, prompt_end=prompt_end)[0].piece
        part = [n for n in clip.notes if n.family == family]
        # its notes a beat: a part turned up must play, but like a part (a kit at 14 hits a beat is not one)
        row = {"seed": seed, "notes": len(part), "per_beat": round(len(part) / (BARS * bar), 2),
               "joined": len(part) >= MIN_PART_NOTES}
        if family == "drums":
            row["on_grid"] = on_grid_share(part, grid) if part else None
        else:
            row["in_key"] = in_scale_share(part, key) if part else None
            if family in JOINED_REGISTER:  # a bass that follows the piano up is not a bass line
                top = JOINED_REGISTER[family][1]
                row["above_register"] = round(sum(n.pitch > top for n in part) / len(part), 3) if part else None
        rows.append(row)
    joined = [r for r in rows if r["joined"]]
    fit = "on_grid" if family == "drums" else "in_key"
    values = [r[fit] for r in joined if r[fit] is not None]
    high = [r["above_register"] for r in rows if r.get("above_register") is not None]
    return {"family": family, "seeds_joined": len(joined), "seeds": seeds,
            fit: round(sum(values) / len(values), 3) if values else None,
            **({"above_register": round(sum(high) / len(high), 3)} if high else {}),
            "per_beat": round(sum(r["per_beat"] for r in rows) / len(rows), 2), "per_seed": rows}


def probe(model: str | None, data: str | None = None, limit: int = 6, families: tuple[str, ...] = ("bass", "drums")) -> dict:
    """Every prompt and family, with the share of prompts that meet the targets."""
    runtime = open_runtime(model, "onnxruntime")
    out: dict = {"model": model or "shipped", "prompts": []}
    for name, prompt in piano_prompts(data, limit):
        out["prompts"].append({"prompt": name, **{f: probe_prompt(runtime, prompt, f) for f in families}})
    for f in families:
        rows = [p[f] for p in out["prompts"]]
        fit = "on_grid" if f == "drums" else "in_key"
        ok = [r["seeds_joined"] >= TARGET_SEEDS and (r[fit] or 0) >= (TARGET_BASS_IN_KEY if f == "bass" else 0.9)
              for r in rows]
        vals = [r[fit] for r in rows if r[fit] is not None]
        out[f] = {"prompts_meeting_target": sum(ok), "prompts": len(rows),
                  "median_seeds_joined": sorted(r["seeds_joined"] for r in rows)[len(rows) // 2] if rows else None,
                  f"mean_{fit}": round(sum(vals) / len(vals), 3) if vals else None,
                  "mean_per_beat": round(sum(r["per_beat"] for r in rows) / len(rows), 2) if rows else None}
        high = [r["above_register"] for r in rows if r.get("above_register") is not None]
        if high:
            out[f]["mean_above_register"] = round(sum(high) / len(high), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[None], help="model folders (default: the shipped model)")
    ap.add_argument("--data", default=None, help="a built data folder: piano-only prompts of its test split")
    ap.add_argument("--limit", type=int, default=6, help="prompts from --data")
    args = ap.parse_args()
    for m in args.models:
        res = probe(m, args.data, args.limit)
        print(json.dumps({k: v for k, v in res.items() if k != "prompts"}))
        for p in res["prompts"]:
            print(json.dumps({"prompt": p["prompt"], **{f: {k: v for k, v in p[f].items() if k != "per_seed"}
                                                     for f in ("bass", "drums")}}))


if __name__ == "__main__":
    main()
