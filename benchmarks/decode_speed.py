"""Beam search with cached decoder keys/values vs recomputing the prefix at every step.

Decodes the first N validation sentences of Multi30k with a trained checkpoint, beam 5, both ways,
alternating rounds; checks the outputs are identical and reports the speed-up. Bar: >= 2x.

    python benchmarks/decode_speed.py CHECKPOINT [--sentences 200] [--beam 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import DATA, interleaved, median, report, timed
from shrinkformer.data.batching import pad
from shrinkformer.data.corpus import read_parallel
from shrinkformer.model.search import SearchConfig, beam_search
from shrinkformer.model.transformer import EOS
from shrinkformer.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch", type=int, default=50, help="sentences per beam-search batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    cfg, tok, model = load_model(args.checkpoint)
    val = read_parallel(DATA, "val", cfg.data.src_lang, cfg.data.tgt_lang, limit=args.sentences)
    ids = tok.encode(val.source)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [pad([ids[i] + [EOS] for i in order[s:s + args.batch]]) for s in range(0, len(order), args.batch)]
    search = SearchConfig(beam_size=args.beam)
    outputs: dict[str, list] = {}

    def run(use_cache: bool):
        def go():
            outputs[str(use_cache)] = [h for b in batches for h in beam_search(model, b, search, use_cache=use_cache)]
        return lambda: timed(go)

    times = interleaved({"cached": run(True), "recompute": run(False)}, args.rounds)
    identical = outputs["True"] == outputs["False"]
    report("decode_speed", {
        "benchmark": "decode_speed", "checkpoint": str(args.checkpoint), "sentences": len(ids), "beam": args.beam,
        "seconds": {k: round(median(v), 3) for k, v in times.items()},
        "speedup_cached": round(median(times["recompute"]) / median(times["cached"]), 2),
        "identical_outputs": identical, "bar": ">= 2.0 with identical outputs",
    }, args.out)
    if not identical:
        raise SystemExit("outputs differ between cached and recomputed decoding")


if __name__ == "__main__":
    main()
