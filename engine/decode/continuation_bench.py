"""The continuation benchmark: does the answer fit what was played, as the real music does?

For every piece (a folder of MIDI files, or a built data folder's split): the first P
bars are the prompt, the next M bars the real continuation. Each system continues the
prompt for M bars from the bar line, and every answer is measured by
`music_metrics.describe` against the prompt (its key and grid estimated from the prompt
alone). Side by side in one run:

* `model`: the model under test, through the same `generate` path as the CLI;
* `real`: the piece's own next M bars (what the measures should look like);
* `repeat`: the prompt's last bar played M times (a floor any model should beat on
  novelty and should match on fit);
* `ngram`: the 4-gram, sampled with the same controls and code (when one is given).

Medians per style and overall, ratios to the real continuation where the target is
"like the real music" (note length, polyphony, density), and a PNG sheet of piano rolls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musebridge.errors import ModelOutputError, MuseBridgeError

from ..music.events import Note, Piece
from .generate import beats_per_bar, generate
from ..music.music_metrics import Grid, Key, describe, estimate_grid, estimate_key
from .sampling import SamplingControls

MEASURES = ("key_agreement", "in_scale", "on_grid", "length_ratio", "drones", "polyphony", "density",
            "pitched_density", "pitch_range", "median_ioi")
RATIO_TO_REAL = ("polyphony", "density", "pitched_density", "median_ioi")  # reported as answer / real as well
MIN_NOTES = 4  # a prompt or continuation with fewer notes says nothing about fit


@dataclass
class Case:
    """One prompt and its real continuation, both from beat 0."""

    name: str
    style: str
    prompt: Piece
    real: list[Note]
    bar: float
    key: Key | None = None
    grid: Grid | None = None
    answers: dict[str, list[Note]] = field(default_factory=dict)
    group: str = ""  # a family of styles: folk, classical, pop, drums, or a folder's name


def style_group(source: str, style: str) -> str:
    """The style family a test-split piece is reported under (the model card's rows)."""
    if source == "music21":
        return "folk" if style.startswith("folk") else "classical"
    return {"pop909": "pop (POP909)", "groove": "drums (Groove)", "pop909_band": "band (POP909 + Groove)"}.get(
        source, source)


def window(notes: list[Note], start: float, end: float) -> list[Note]:
    """Notes struck in [start, end), shifted to start at 0 and cut at `end`."""
    return [Note(n.start - start, min(n.end, end) - n.start, n.pitch, n.velocity, n.family)
            for n in notes if start <= n.start < end]


def make_case(piece: Piece, name: str, style: str, prompt_bars: int, answer_bars: int) -> Case | None:
    """The case of one piece, or None if it is too short or too sparse to judge."""
    bar = beats_per_bar(Piece(time_signatures=piece.time_signatures[:1]))
    first = min((n.start for n in piece.notes), default=0.0)
    start = math.floor(first / bar) * bar  # skip leading silence, keep bar lines
    cut, end = start + prompt_bars * bar, start + (prompt_bars + answer_bars) * bar
    prompt_notes, real = window(piece.notes, start, cut), window(piece.notes, cut, end)
    if len(prompt_notes) < MIN_NOTES or len(real) < MIN_NOTES:
        return None
    tempos = [piece.tempo_map().bpm_at(start)] if piece.tempos else []
    from ..music.events import Tempo, TimeSignature

    sig = piece.time_signatures[0] if piece.time_signatures else None
    prompt = Piece(notes=prompt_notes, tempos=[Tempo(0.0, b) for b in tempos],
                   time_signatures=[TimeSignature(0.0, sig.numerator, sig.denominator)] if sig else [],
                   style=piece.style).sorted()
    case = Case(name, style, prompt, real, bar)
    case.key, case.grid = estimate_key(prompt.notes), estimate_grid(prompt.notes)
    return case


def cases_from_folder(folder: str | Path, prompt_bars: int = 4, answer_bars: int = 4, limit: int | None = None) -> list[Case]:
    """Cases from every readable .mid/.midi file under `folder` (style: its parent folder's name)."""
    from ..music.midi_file import read_midi

    out = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".mid", ".midi")):
        try:
            piece = read_midi(path)
        except MuseBridgeError:
            continue
        case = make_case(piece, path.stem, path.parent.name, prompt_bars, answer_bars)
        if case is not None:
            rel = path.relative_to(folder).parts
            case.group = rel[0] if len(rel) > 1 else Path(folder).name
            out.append(case)
        if limit and len(out) >= limit:
            break
    return out


def cases_from_split(data: str | Path, split: str = "test", prompt_bars: int = 4, answer_bars: int = 4,
                     limit: int | None = None, seed: int = 0, sources: tuple[str, ...] = ()) -> list[Case]:
    """Cases from a built data folder's split (pieces decoded from their tokens), drawn
    evenly across styles so one large collection does not decide the medians; `sources`
    keeps the pieces of some collections only (e.g. the band-context prompts)."""
    from ..data.dataset import TokenShards
    from ..music.tokenizer import decode_tokens

    shards = TokenShards(data)
    pieces = shards.split_pieces(split, sources)
    by_style: dict[str, list[dict]] = {}
    for p in pieces:
        by_style.setdefault(str(p.get("style")), []).append(p)
    rng = np.random.default_rng(seed)
    for group in by_style.values():
        rng.shuffle(group)
    order = [g[i] for i in range(max(map(len, by_style.values()), default=0)) for g in by_style.values() if i < len(g)]
    out = []
    for p in order:
        if shards.vocab.config.time_mode != "beats":
            break
        piece = decode_tokens(shards.piece_tokens(p), shards.vocab)
        case = make_case(piece, str(p.get("id", p.get("offset"))), str(p.get("style")), prompt_bars, answer_bars)
        if case is not None:
            case.group = style_group(str(p.get("source")), case.style)
            out.append(case)
        if limit and len(out) >= limit:
            break
    return out


def repeat_last_bar(case: Case, answer_bars: int) -> list[Note]:
    """The prompt's last bar, played again `answer_bars` times."""
    last = (math.ceil(max(n.start for n in case.prompt.notes) / case.bar + 1e-9) - 1) * case.bar
    bar_notes = window(case.prompt.notes, last, last + case.bar)
    return [Note(n.start + k * case.bar, n.duration, n.pitch, n.velocity, n.family)
            for k in range(answer_bars) for n in bar_notes]


def answer(runtime, case: Case, answer_bars: int, controls: SamplingControls, seed: int) -> list[Note]:
    """What `runtime` plays after the prompt from its last bar line, `answer_bars` long."""
    from dataclasses import replace

    prompt_end = math.ceil(max(n.end for n in case.prompt.notes) / case.bar - 1e-9) * case.bar
    prompt_end = max(prompt_end, case.bar)
    res = generate(runtime, case.prompt, answer_bars, replace(controls, seed=seed), case.prompt.style,
                   prompt_end=prompt_end)[0]
    return list(res.piece.notes)


def run(cases: list[Case], systems: dict, answer_bars: int = 4, controls: SamplingControls = SamplingControls(),
        seeds: tuple[int, ...] = (0,), progress=None) -> dict:
    """Measure every system on every case; {"cases": [...], "medians": {...}}."""
    rows = []
    for i, case in enumerate(cases):
        beats = answer_bars * case.bar
        case.answers = {"real": case.real, "repeat": repeat_last_bar(case, answer_bars)}
        failed: dict[str, str] = {}
        for name, runtime in systems.items():
            for seed in seeds:
                key = name if len(seeds) == 1 else f"{name}@{seed}"
                try:
                    case.answers[key] = answer(runtime, case, answer_bars, controls, seed)
                except ModelOutputError as e:  # the guard stopped it: counted, and the run goes on
                    case.answers[key], failed[key] = [], str(e)
        real = describe(case.real, beats, case.prompt, case.key, case.grid, case.bar)
        for name, notes in case.answers.items():
            d = describe(notes, beats, case.prompt, case.key, case.grid, case.bar)
            for m in RATIO_TO_REAL:
                d[f"{m}_vs_real"] = None if d[m] is None or not real[m] else d[m] / real[m]
            rows.append({"case": case.name, "style": case.style, "group": case.group, "system": name.split("@")[0],
                         "key": str(case.key), "grid": case.grid.name, "error": failed.get(name), **d})
        if progress:
            progress(i + 1, len(cases))
    return {"cases": rows, "medians": medians(rows), "groups": medians(rows, "group")}


def medians(rows: list[dict], by: str = "style") -> dict:
    """{system: {style (or group) | "all": {measure: median}}}; drones also as a mean (rare but loud)."""
    keys = [*MEASURES, *(f"{m}_vs_real" for m in RATIO_TO_REAL)]
    out: dict = {}
    for system in sorted({r["system"] for r in rows}):
        mine = [r for r in rows if r["system"] == system]
        groups = {"all": mine} | {s: [r for r in mine if r[by] == s] for s in sorted({r[by] for r in mine})}
        out[system] = {}
        for g, rs in groups.items():
            stats = {"prompts": len({r["case"] for r in rs}), "errors": sum(r.get("error") is not None for r in rs)}
            for k in keys:
                vals = [r[k] for r in rs if r.get(k) is not None]
                stats[k] = round(float(np.median(vals)), 4) if vals else None
            drones = [r["drones"] for r in rs if r.get("drones") is not None]
            stats["drones_mean"] = round(float(np.mean(drones)), 4) if drones else None
            out[system][g] = stats
    return out


def table(result: dict, group: str = "all", by: str = "style") -> str:
    """The medians of one style (`by="style"`) or style group (`by="group"`) as a plain-text
    table, one column per system."""
    med = result["groups" if by == "group" else "medians"]
    systems = [s for s in ("model", "ngram", "repeat", "real") if s in med] + \
              [s for s in med if s not in ("model", "ngram", "repeat", "real")]
    keys = ["prompts", "errors", "key_agreement", "in_scale", "on_grid", "length_ratio", "drones", "drones_mean", "polyphony",
            "polyphony_vs_real", "density", "density_vs_real", "pitched_density_vs_real", "pitch_range", "median_ioi"]
    width = max(len(k) for k in keys) + 2
    lines = [f"{'median (' + group + ')':<{width}}" + "".join(f"{s:>10}" for s in systems)]
    for k in keys:
        cells = []
        for s in systems:
            v = med[s].get(group, {}).get(k)
            cells.append(f"{'-' if v is None else (f'{v:.3g}' if isinstance(v, float) else v):>10}")
        lines.append(f"{k:<{width}}" + "".join(cells))
    return "\n".join(lines)


def require_matplotlib() -> None:
    """The piano-roll sheet draws with matplotlib, which the runtime install lacks: say so
    before minutes of generating, not after."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MuseBridgeError("the piano-roll sheet needs matplotlib: pip install matplotlib (or leave out --png)")


def _first_answer(case: Case, system: str) -> list[Note] | None:
    """A system's answer to draw: its only one, or its first seed's (`system@seed`)."""
    if system in case.answers:
        return case.answers[system]
    return next((notes for key, notes in case.answers.items() if key.split("@")[0] == system), None)


def roll_sheet(cases: list[Case], path: str | Path, systems: tuple[str, ...] = ("model", "real"), n: int = 6) -> Path:
    """A PNG of piano rolls, one row per case: prompt | each system's answer (real last)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..music.families import FAMILIES

    colours = {f.name: plt.get_cmap("tab20")(i % 20) for i, f in enumerate(FAMILIES)}
    shown = cases[:n]
    cols = ["prompt", *[s for s in systems if all(_first_answer(c, s) is not None for c in shown)]]
    fig, axes = plt.subplots(len(shown), len(cols), figsize=(3.2 * len(cols), 1.9 * len(shown)), squeeze=False)
    for r, case in enumerate(shown):
        pitches = [n.pitch for n in case.prompt.notes] + [n.pitch for c in cols[1:] for n in _first_answer(case, c)]
        lo, hi = min(pitches, default=48) - 2, max(pitches, default=72) + 2
        for c, col in enumerate(cols):
            ax = axes[r][c]
            notes = case.prompt.notes if col == "prompt" else _first_answer(case, col)
            length = max(case.prompt.end if col == "prompt" else 0.0, 4 * case.bar)
            for note in notes:
                ax.add_patch(Rectangle((note.start, note.pitch - 0.4), max(note.duration, 0.05), 0.8,
                                       color=colours.get(note.family, "k"), linewidth=0))
            for b in np.arange(0, length + 1e-9, case.bar):
                ax.axvline(b, color="0.85", linewidth=0.6, zorder=0)
            ax.set_xlim(0, length)
            ax.set_ylim(lo, hi)
            ax.set_xticks([])
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(col, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{case.name[:18]}\n{case.style[:18]} · {case.key}", fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, format="png")  # the name may be a temp file's
    plt.close(fig)
    return path


CARD_COLUMNS = (("key agr.", "key_agreement", "{:.2f}"), ("in scale", "in_scale", "{:.2f}"),
                ("on grid", "on_grid", "{:.2f}"), ("length ×prompt", "length_ratio", "{:.2f}"),
                ("drones (mean)", "drones_mean", "{:.1%}"), ("polyphony ×real", "polyphony_vs_real", "{:.2f}"),
                ("density ×real", "density_vs_real", "{:.2f}"), ("pitched ×real", "pitched_density_vs_real", "{:.2f}"))


def markdown_table(result: dict) -> str:
    """Medians per style group (and all), one row per system: the model card's table."""
    med = result["groups"]
    systems = [s for s in ("model", "ngram", "repeat", "real") if s in med]
    head = "| group (prompts) | system | " + " | ".join(c[0] for c in CARD_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (2 + len(CARD_COLUMNS))]
    for group in med["real"]:
        for s in systems:
            stats = med[s].get(group, {})
            cells = ["–" if stats.get(k) is None else fmt.format(stats[k]).replace("%", " %") for _, k, fmt in CARD_COLUMNS]
            lines.append(f"| {group} ({stats.get('prompts', 0)}) | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
