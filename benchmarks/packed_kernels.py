"""Packed layers against torch fp32 ``F.linear`` at the base preset's shapes, the way decoding uses
them: rows M = 1, 5 (beam), 40, 320, cycling over enough distinct layers that weights come from
DRAM, not cache: >= 100 MB of fp32 weights and at least twice the last-level cache (some server
CPUs have hundreds of MB of L3, where 100 MB would stay in cache). Side by side, alternating,
median of rounds.

    python benchmarks/packed_kernels.py --out results/benchmarks/kernels.json

Bars (issue: runtime): M <= 5: 4-bit >= 3x fp32, 1-bit >= 5x, 80%-sparse 4-bit >= 4x; M = 320 >= 1.0x.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import interleaved, median, report, timed

from shrinkformer.compress.base import CodebookCodec
from shrinkformer.inference.layers import PackedWeight
from shrinkformer.compress.primitives import assign, magnitude_mask

SHAPES = {"512->512": (512, 512), "512->2048": (2048, 512), "2048->512": (512, 2048), "output 512->32000": (32000, 512)}


def packed(weight: torch.Tensor, bits: int, sparsity: float) -> PackedWeight:
    """A codebook layer with quantile centroids: the kernels' speed does not depend on how the
    centroids were found, and the Numba k-means would leave its thread pool waking under torch's
    timings."""
    mask = magnitude_mask(weight, sparsity) if sparsity else None
    values = weight[mask] if mask is not None else weight.flatten()
    k = 2 ** bits
    centroids = values.quantile(torch.linspace(0.5 / k, 1 - 0.5 / k, k)) if values.numel() <= 2**24 else \
        torch.linspace(float(values.min()), float(values.max()), k)
    index = assign(values, centroids).to(torch.uint8)
    return PackedWeight.from_codec(CodebookCodec(weight.shape, centroids, index, mask))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,5,40,320")
    p.add_argument("--megabytes", type=float, help="fp32 weights cycled through per shape "
                   "(default: 100, or twice the last-level cache if that is more)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    llc = last_level_cache_bytes()
    if args.megabytes is None:
        args.megabytes = max(100.0, 2 * llc / 2**20)
    torch.manual_seed(0)
    kinds = {"4-bit": (4, 0.0), "1-bit": (1, 0.0), "80%-sparse 4-bit": (4, 0.8)}
    results = []
    for shape_name in args.shapes.split(","):
        rows_out, cols = SHAPES[shape_name]
        n_layers = max(2, int(args.megabytes * 2**20 / (4 * rows_out * cols)))
        dense = [torch.randn(rows_out, cols) * cols ** -0.5 for _ in range(n_layers)]
        forms = {k: [packed(w, b, s) for w in dense] for k, (b, s) in kinds.items()}
        for m in (int(x) for x in args.rows.split(",")):
            x = torch.randn(m, cols)
            fns = {"fp32": lambda: timed(lambda: [F.linear(x, w) for w in dense])}
            for k, layers in forms.items():
                fns[k] = (lambda layers: lambda: timed(lambda: [w.matmul_t(x) for w in layers]))(layers)
            times = {k: median(v) for k, v in interleaved(fns, args.rounds).items()}
            for k in kinds:
                results.append({"shape": shape_name, "rows": m, "kind": k, "layers": n_layers,
                                "fp32_ms_per_layer": round(1e3 * times["fp32"] / n_layers, 4),
                                "packed_ms_per_layer": round(1e3 * times[k] / n_layers, 4),
                                "speedup_over_fp32": round(times["fp32"] / times[k], 3)})
                print(results[-1], file=sys.stderr)
    report("kernels", {"command": shlex.join(["python", *sys.argv]), "path": kernel_path(),
                       "megabytes_per_shape": args.megabytes, "last_level_cache_bytes": llc,
                       "results": results}, args.out)


def last_level_cache_bytes() -> int:
    """The largest cache this CPU reports (Linux sysfs), 0 where it reports none."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=0)


def kernel_path() -> str:
    """Which code ran the packed products: the native kernels (and which), or the tile path."""
    from shrinkformer.inference import native
    from shrinkformer.runtime import native as runtime_native

    if native.library() is None:
        return "tile (pure PyTorch)"
    simd = "portable C" if runtime_native.loaded_variant() == "portable" else \
        "AVX-512" if runtime_native.wide() else "AVX2"
    return f"native ({simd}) up to {native.MAX_ROWS} rows of x " \
           f"({native.MAX_1BIT_ROWS} for 1-bit, {native.MAX_MASKED_ROWS} for pruned layers), " \
           "dequantized tiles and BLAS above"

if __name__ == "__main__":
    main()
