"""shrinkformer's 1-D k-means vs scikit-learn KMeans on every Linear weight of a preset.

Same data, same initial centroids (linear init), same k, n_init=1. Each round clusters every layer
with one, then every layer with the other, as `compress` does (layer after layer); rounds
alternate, and each side's time is its median round. Our kernels are compiled before timing
starts. Reported: seconds each, the speed-up, the slowest layer's speed-up, and per layer whether
our within-cluster squared error is equal or lower. Bars: >= 50x faster, SSE <= sklearn's on every
layer.

Layers interleaved one by one instead (``--per-layer``, how this benchmark ran before) cost us
more: each switch leaves scikit-learn's OpenMP threads spinning beside our Numba threads on this
2-core VM, and both pools' caches and wake-ups cold; the JSON says which way a figure was taken.

    python benchmarks/kmeans_speed.py [--preset base] [--bits 4] [--rounds 3] [--per-layer]
"""


from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from common import interleaved, median, report, timed
from shrinkformer.compress.primitives import assign, init_centroids, kmeans_1d, within_cluster_sse
from shrinkformer.model import MODEL_PRESETS, Transformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--checkpoint", type=Path, help="cluster a trained model's weights instead of a fresh preset")
    p.add_argument("--layers", type=int, help="only the first N Linear layers (quick runs)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-layer", action="store_true", help="alternate layer by layer (see above)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        from shrinkformer.checkpoint import load_model
        model = load_model(args.checkpoint)[2]
    else:
        model = Transformer(dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=1000))
    weights = [(n, m.weight.detach()) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weights = weights[: args.layers] if args.layers else weights
    k = 2 ** args.bits
    # Numba compiles (or loads from its disk cache) on the first call: a one-off, kept out of timing.
    kmeans_1d(torch.randn(1 << 18), k)
    kmeans_1d(torch.randn(1 << 16), k)
    inits = [init_centroids(w, k, "linear").numpy().reshape(-1, 1) for _, w in weights]
    samples = [w.flatten().double().numpy().reshape(-1, 1) for _, w in weights]
    ours: list = [None] * len(weights)
    theirs: list = [None] * len(weights)
    layer_s = {"ours": np.zeros(len(weights)), "sklearn": np.zeros(len(weights))}

    def run_ours(i: int) -> None:
        ours[i] = kmeans_1d(weights[i][1], k, "linear")

    def run_sklearn(i: int) -> None:
        theirs[i] = KMeans(n_clusters=k, init=inits[i], n_init=1, algorithm="lloyd").fit(samples[i])

    def rounds_of(fn, side: str):
        def one_round() -> float:
            total = 0.0
            for i in range(len(weights)):
                seconds = timed(lambda: fn(i))
                layer_s[side][i] = seconds if not layer_s[side][i] else min(layer_s[side][i], seconds)
                total += seconds
            return total
        return one_round

    if args.per_layer:  # one layer with each, then the next layer
        totals = {"ours": [], "sklearn": []}
        for _ in range(args.rounds):
            t_ours = t_sk = 0.0
            for i in range(len(weights)):
                t_ours += timed(lambda: run_ours(i))
                t_sk += timed(lambda: run_sklearn(i))
            totals["ours"].append(t_ours)
            totals["sklearn"].append(t_sk)
        layer_s = {side: np.zeros(len(weights)) for side in layer_s}  # not measured this way
    else:
        totals = interleaved({"ours": rounds_of(run_ours, "ours"), "sklearn": rounds_of(run_sklearn, "sklearn")},
                             args.rounds)
    ours_s, sk_s = median(totals["ours"]), median(totals["sklearn"])
    worse = []
    for (name, w), (c, idx), km in zip(weights, ours, theirs):
        c_sk = torch.from_numpy(np.sort(km.cluster_centers_.ravel())).float()
        sse_ours, sse_sk = within_cluster_sse(w, c, idx), within_cluster_sse(w, c_sk, assign(w.flatten(), c_sk))
        if sse_ours > sse_sk * (1 + 1e-9):
            worse.append({"layer": name, "ours": sse_ours, "sklearn": sse_sk})
    slowest = float((layer_s["sklearn"] / layer_s["ours"]).min()) if layer_s["ours"].all() else None
    report("kmeans_speed", {
        "benchmark": "kmeans_speed",
        "weights_from": str(args.checkpoint) if args.checkpoint else f"{args.preset} preset, fresh init",
        "bits": args.bits, "layers": len(weights), "weights": sum(w.numel() for _, w in weights),
        "timing": "layer by layer, alternating" if args.per_layer else "every layer with one, then the other",
        "rounds": args.rounds,
        "seconds": {"shrinkformer": round(ours_s, 3), "sklearn": round(sk_s, 3)},
        "speedup": round(sk_s / ours_s, 1), "min_layer_speedup": None if slowest is None else round(slowest, 1),
        "layers_with_higher_sse_than_sklearn": worse, "bar": ">= 50x, SSE <= sklearn on every layer",
    }, args.out)


if __name__ == "__main__":
    main()
