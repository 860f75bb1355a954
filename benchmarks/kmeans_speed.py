"""shrinkformer's 1-D k-means vs scikit-learn KMeans on every Linear weight of a preset.

Same data, same initial centroids (linear init), same k, n_init=1; rounds alternate between the
two. Our kernels are compiled before timing starts. Reported: total seconds each, the speed-up, and per layer whether our within-cluster squared
error is equal or lower. Bars: >= 50x faster, SSE <= sklearn's on every layer.

    python benchmarks/kmeans_speed.py [--preset base] [--bits 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from common import report
from shrinkformer.compress.primitives import assign, init_centroids, kmeans_1d, within_cluster_sse
from shrinkformer.model import MODEL_PRESETS, Transformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--checkpoint", type=Path, help="cluster a trained model's weights instead of a fresh preset")
    p.add_argument("--layers", type=int, help="only the first N Linear layers (quick runs)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        from shrinkformer.train.checkpoint import load_model
        model = load_model(args.checkpoint)[2]
    else:
        model = Transformer(dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=1000))
    weights = [(n, m.weight.detach()) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weights = weights[: args.layers] if args.layers else weights
    k = 2 ** args.bits
    # Numba compiles (or loads from its disk cache) on the first call: a one-off, kept out of timing.
    kmeans_1d(torch.randn(1 << 18), k)
    kmeans_1d(torch.randn(1 << 16), k)
    ours_s = sk_s = 0.0
    worse, ratios = [], []
    for name, w in weights:
        init = init_centroids(w, k, "linear")
        t = time.perf_counter()
        c, idx = kmeans_1d(w, k, "linear")
        ours_s += (d_ours := time.perf_counter() - t)
        x = w.flatten().double().numpy().reshape(-1, 1)
        t = time.perf_counter()
        km = KMeans(n_clusters=k, init=init.numpy().reshape(-1, 1), n_init=1, algorithm="lloyd").fit(x)
        sk_s += (d_sk := time.perf_counter() - t)
        ratios.append(d_sk / d_ours)
        c_sk = torch.from_numpy(np.sort(km.cluster_centers_.ravel())).float()
        ours, theirs = within_cluster_sse(w, c, idx), within_cluster_sse(w, c_sk, assign(w.flatten(), c_sk))
        if ours > theirs * (1 + 1e-9):
            worse.append({"layer": name, "ours": ours, "sklearn": theirs})
    report("kmeans_speed", {
        "benchmark": "kmeans_speed", "weights_from": str(args.checkpoint) if args.checkpoint else f"{args.preset} preset, fresh init", "bits": args.bits, "layers": len(weights),
        "weights": sum(w.numel() for _, w in weights),
        "seconds": {"shrinkformer": round(ours_s, 3), "sklearn": round(sk_s, 3)},
        "speedup": round(sk_s / ours_s, 1), "min_layer_speedup": round(min(ratios), 1),
        "layers_with_higher_sse_than_sklearn": worse, "bar": ">= 50x, SSE <= sklearn on every layer",
    }, args.out)


if __name__ == "__main__":
    main()
