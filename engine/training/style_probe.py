"""Does the model follow its conditioning? `python -m musebridge.engine.training.style_probe [MODEL ...]`

From silence, with only a style token, each style should sound like its training data:
POP909 is piano, Groove is drums, Bach chorales and Palestrina are sung (`ensemble`),
the folk collections are single lines (`pipe`), Beethoven and Haydn are string quartets.
For each style this generates a few clips (4 bars, seeds 0..n-1) and reports the share of
notes in the family that style's data plays. A model that ignores the style token scores
about the same for every style. Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import json

from ..decode.backends import open_runtime
from ..music.events import Piece
from ..decode.generate import generate
from ..decode.sampling import SamplingControls

EXPECTED = {"pop": "piano", "rock": "drums", "funk": "drums", "bach": "ensemble", "palestrina": "ensemble",
            "folk_irish": "pipe", "folk_essen": "pipe", "beethoven": "strings", "haydn": "strings"}


def probe(model: str | None, samples: int = 6, bars: float = 4.0) -> dict:
    """{style: share of notes in its expected family}, and their mean."""
    rt = open_runtime(model, "onnxruntime")
    shares = {}
    for style, family in EXPECTED.items():
        if style not in rt.vocab.styles:
            continue
        hit = total = 0
        for seed in range(samples):
            clip = generate(rt, Piece(), bars, SamplingControls(seed=seed), style)[0].piece
            hit += sum(n.family == family for n in clip.notes)
            total += len(clip.notes)
        shares[style] = round(hit / max(total, 1), 3)
    return {"model": model or "shipped", "share_in_expected_family": shares,
            "mean": round(sum(shares.values()) / max(len(shares), 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[None], help="model folders (default: the shipped model)")
    ap.add_argument("--samples", type=int, default=6)
    args = ap.parse_args()
    for m in args.models:
        print(json.dumps(probe(m, args.samples)))


if __name__ == "__main__":
    main()
