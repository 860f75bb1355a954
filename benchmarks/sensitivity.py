"""Does the Fisher estimate rank compression choices as the measured loss does? For a seeded sample
of (layer, choice) pairs of a trained model: the Fisher estimate (what the budgeted allocation uses)
and the measured increase of held-out loss with only that layer compressed; their Spearman rank
correlation, overall and across layers for each choice; and the time each takes.

    python benchmarks/sensitivity.py results/multi30k/models/baseline.sfz --out results/benchmarks/sensitivity.json
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, report

from shrinkformer.workflow.allocate import CHOICES
from shrinkformer.data.corpus import read_parallel
from shrinkformer.loading import load_adapter
from shrinkformer.workflow import sensitivity


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = (np.argsort(np.argsort(np.asarray(x))) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--pairs", type=int, default=160, help="(layer, choice) pairs measured")
    p.add_argument("--fisher-sentences", type=int, default=500, help="training pairs for the Fisher estimate")
    p.add_argument("--loss-sentences", type=int, default=200, help="validation pairs for the measured loss")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_adapter(args.model, training=True)
    model, weights = adapter.model, adapter.candidates()
    choices = [c for c in CHOICES if not c.dense]
    train = adapter.encode(read_parallel(DATA, "train", "en", "de", args.fisher_sentences))
    valid = adapter.encode(read_parallel(DATA, "val", "en", "de", args.loss_sentences))
    fisher_batches = adapter.loss_batches(train, args.fisher_sentences, 1024)
    loss_batches = adapter.loss_batches(valid, args.loss_sentences, 4096)

    started = time.perf_counter()
    _, masks = sensitivity.price(weights, choices, True)
    fisher = sensitivity.fisher_scores(model, weights, fisher_batches, choices, masks)
    fisher_seconds = time.perf_counter() - started

    rng = random.Random(0)
    sample = rng.sample([(n, c) for n in weights for c in choices], args.pairs)
    started = time.perf_counter()
    measured = {}
    for name, choice in sample:
        sub = {name: weights[name]}
        measured[(name, choice)] = sensitivity.loss_scores(model, sub, loss_batches, [choice],
                                                           {name: masks[name]})[name][choice]
    loss_seconds = time.perf_counter() - started
    f = [fisher[n][c] for n, c in sample]
    m = [measured[(n, c)] for n, c in sample]
    per_choice = {}
    for c in choices:
        mine = [(fisher[n][cc], measured[(n, cc)]) for n, cc in sample if cc == c]
        if len(mine) >= 5:
            per_choice[c.label] = {"pairs": len(mine), "spearman": round(spearman(*zip(*mine)), 3)}
    result = {
        "command": "python " + shlex.join(sys.argv), "model": str(args.model), "pairs": len(sample),
        "spearman_all": round(spearman(f, m), 3), "spearman_per_choice_across_layers": per_choice,
        "fisher_seconds_all_pairs": round(fisher_seconds, 1),
        "fisher_pairs": len(weights) * len(choices),
        "loss_seconds_per_pair": round(loss_seconds / len(sample), 3),
        "loss_seconds_all_pairs_estimated": round(loss_seconds / len(sample) * len(weights) * len(choices), 1),
        "sample": [{"layer": n, "choice": c.label, "fisher": fisher[n][c], "loss_increase": measured[(n, c)]}
                   for n, c in sample]}
    report("sensitivity", result, args.out)


if __name__ == "__main__":
    main()
