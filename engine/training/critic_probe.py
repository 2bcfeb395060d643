"""Does a critic tell the generator's music from real music it never saw?
`python -m musebridge.engine.training.critic_probe --data DATA [CRITIC ...]`

A critic ranks candidate answers (`generate --variations`, the jam's `--candidates`), so
what matters is how well it separates the *shipped* generator's windows from real ones.
One trained against an older generator learns that one's faults: the stage-2 critic,
scored here on the stage-4 generator's output, fell to 0.62 accuracy. This generates
windows from the validation split (64 real tokens, then the generator's own, as the
critic was trained) and reports each critic's accuracy and AUC (the chance that a real
window scores above a generated one) on the same windows. Prints one JSON object per critic.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def probe(critics: list[str], data: str, generator: str | None = None, samples: int = 48, length: int = 512,
          seed: int = 7) -> list[dict]:
    from ..data.dataset import TokenShards
    from ..decode.torch_runtime import TorchRuntime
    from .checkpoint import load_model
    from .critic import generated_windows, load_classifier, real_windows, separation

    shards = TokenShards(data)
    model, vocab, _ = load_model(generator)
    rng = np.random.default_rng(seed)
    gen = generated_windows(TorchRuntime(model, vocab), shards, "val", samples, length, 64, rng)
    real, _ = real_windows(shards, "val", samples, length, rng)
    out = []
    for folder in critics:
        clf, v, info = load_classifier(folder)
        sep = separation(clf, v, real, gen, length)
        out.append({"critic": folder, "trained_against": info.get("generator"),
                    "accuracy": round(sep["accuracy"], 3), "auc": round(sep["auc"], 3)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("critics", nargs="*", help="critic folders (default: the shipped model's critic)")
    ap.add_argument("--data", required=True, help="a built data folder (its validation split)")
    ap.add_argument("--generator", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--samples", type=int, default=48, help="generated windows (and as many real ones)")
    args = ap.parse_args(argv)
    from pathlib import Path

    from .checkpoint import DEFAULT_MODEL

    critics = args.critics or [str(Path(args.generator or DEFAULT_MODEL) / "critic")]
    for row in probe(critics, args.data, args.generator, args.samples):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
