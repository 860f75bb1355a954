"""Batch-1 decoding latency on the base preset (d_model 512, 6 + 6 layers, d_ff 2048, tied 32000-token
embedding): the fp32 model against the same model packed (every Linear and the embedding, k-means
codebooks, inference form), side by side, alternating rounds, median. Random weights are fine for
timing (the issue says so): the sources are random token ids, and with random weights decoding runs
to its length limit, so both models decode the same number of steps (checked, and recorded).

    python benchmarks/base_latency.py --out results/benchmarks/base_latency.json

Bar (issue: runtime): packed 4-bit >= 2x fp32 at batch 1 on the base preset.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

import torch
from common import interleaved, median, report, timed

from shrinkformer.compress import KMeansConfig, compress
from shrinkformer.inference.layers import resident_weight_bytes, to_inference
from shrinkformer.model import MODEL_PRESETS, Transformer
from shrinkformer.model.search import SearchConfig, beam_search
from shrinkformer.model.transformer import EOS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=4, help="sources decoded one at a time per round")
    p.add_argument("--source-tokens", type=int, default=20)
    p.add_argument("--bits", default="4,1", help="comma-separated codebook widths to pack")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    cfg = MODEL_PRESETS["base"]
    fp32 = Transformer(cfg).eval()
    models = {"fp32": fp32}
    for bits in (int(b) for b in args.bits.split(",")):
        packed = copy.deepcopy(fp32)
        compress(packed, KMeansConfig(bits), scope=["all", "embeddings"])
        models[f"packed {bits}-bit"] = to_inference(packed)
    g = torch.Generator().manual_seed(1)
    sources = [torch.cat([torch.randint(4, cfg.vocab_size, (1, args.source_tokens), generator=g),
                          torch.tensor([[EOS]])], dim=1) for _ in range(args.sentences)]
    search = SearchConfig(beam_size=5)
    lengths: dict[str, list[int]] = {}

    def run(name: str):
        def go() -> None:
            lengths[name] = [len(beam_search(models[name], src, search)[0]) for src in sources]
        return lambda: timed(go)

    fns = {name: run(name) for name in models}
    for fn in fns.values():  # warm-up: kernels compiled, buffers grown
        fn()
    times = {k: median(v) for k, v in interleaved(fns, args.rounds).items()}
    rows = {name: {"ms_per_sentence": round(1e3 * times[name] / args.sentences, 1),
                   "output_tokens": lengths[name], "resident_weight_bytes": resident_weight_bytes(models[name]),
                   "batch1_speedup_vs_fp32": round(times["fp32"] / times[name], 3)} for name in models}
    report("base_latency", {"command": shlex.join(["python", *sys.argv]),
        "benchmark": "base_latency", "preset": "base", "parameters": sum(p.numel() for p in fp32.parameters()),
        "beam": search.beam_size, "source_tokens": args.source_tokens, "sentences": args.sentences,
        "rounds": args.rounds, "same_lengths": len({tuple(r["output_tokens"]) for r in rows.values()}) == 1,
        "models": rows, "bar": "packed 4-bit >= 2x fp32",
    }, args.out)


if __name__ == "__main__":
    main()
