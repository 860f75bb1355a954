"""Cost of a training step with each compression method in the loop, relative to a plain step.

Same model (fresh ``small`` preset), same Multi30k batches, Adam; rounds alternate between the
variants. Bar: every method <= 1.3x a plain training step.

    python benchmarks/retrain_step.py [--preset small] [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import torch

from common import interleaved, median, multi30k_batches, report
from shrinkformer.compress import BinaryConfig, KMeansConfig, PruneConfig, compress
from shrinkformer.model import MODEL_PRESETS, Transformer
from train_throughput import step_fn

VARIANTS = {
    "plain": [],
    "kmeans-4bit-all": [(KMeansConfig(4), "all")],
    "kmeans-1bit-all": [(KMeansConfig(1), "all")],
    "bsflex-self-attention": [(BinaryConfig("flex"), "self-attention")],
    "bsflex-all": [(BinaryConfig("flex"), "all")],
    "binary-fixed-all": [(BinaryConfig("fixed"), "all")],
    "prune-50-all": [(PruneConfig(0.5, 0.5), "all")],
    "prune-80+kmeans-4bit-all": [(PruneConfig(0.8, 0.8), "all"), (KMeansConfig(4), "all")],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    tok, batches = multi30k_batches(args.steps)
    torch.manual_seed(0)
    base = Transformer(dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=len(tok)))
    fns = {}
    for name, stages in VARIANTS.items():
        model = copy.deepcopy(base).train()
        for config, scope in stages:
            compress(model, config, scope)
        fns[name] = step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-4), batches)
        fns[name]()  # warm-up
    times = interleaved(fns, args.rounds)
    plain = median(times["plain"])
    report("retrain_step", {
        "benchmark": "retrain_step", "preset": args.preset, "steps_per_round": args.steps, "rounds": args.rounds,
        "seconds_per_step": {k: round(median(v) / args.steps, 4) for k, v in times.items()},
        "ratio_to_plain": {k: round(median(v) / plain, 3) for k, v in times.items() if k != "plain"},
        "bar": "<= 1.3 for every method",
    }, args.out)


if __name__ == "__main__":
    main()
