"""One BS-Flex step (re-assignment + centroid means by tensor indexing) vs re-running 1-bit
k-means (Lloyd to convergence) on the same layers: the two ways to refresh a binary layer during
retraining. Bar (the study reports it): >= 10x faster.

    python benchmarks/bsflex_speed.py [--preset small] [--scope self-attention] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from common import interleaved, median, report, timed
from shrinkformer.compress import select
from shrinkformer.compress.primitives import binarize_flex, kmeans_1d
from shrinkformer.model import MODEL_PRESETS, Transformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--scope", default="self-attention")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=1000))
    weights = [m.weight.detach() for m in select(model, [args.scope]).values()]
    thresholds = [w.mean() for w in weights]

    def flex():
        for w, t in zip(weights, thresholds):
            binarize_flex(w, t)

    def kmeans():
        for w in weights:
            kmeans_1d(w, 2)

    times = interleaved({"bsflex": lambda: timed(flex), "kmeans_1bit": lambda: timed(kmeans)}, args.rounds)
    report("bsflex_speed", {
        "benchmark": "bsflex_speed", "preset": args.preset, "scope": args.scope, "layers": len(weights),
        "seconds": {k: round(median(v), 5) for k, v in times.items()},
        "speedup": round(median(times["kmeans_1bit"]) / median(times["bsflex"]), 1), "bar": ">= 10x",
    }, args.out)


if __name__ == "__main__":
    main()
