"""Native decoding steps against the PyTorch steps on the same models: the same translations?

Translates a split with each model both ways (``Translator(native=True)`` and ``native=False``), at
the default batching and, for the first sentences, at batch 1, and reports per model how many lines
are identical, BLEU both ways, and the time each took (one round each, native first: a speed figure
here is indicative; ``inference.py`` is the timing benchmark).

    python benchmarks/native_steps.py results/multi30k/models/baseline.sfz \\
        results/multi30k/models/kmeans-4bit-all+embeddings.sfz --out results/benchmarks/native_steps.json

Bar (issue: runtime, item 4): translations stay what they are, except where summation order moves a
near-tie: BLEU within 0.05.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from common import DATA, report

from shrinkformer.inference.engine import native_engine
from shrinkformer.data.corpus import read_parallel
from shrinkformer.evaluate.bleu import score
from shrinkformer.loading import load_any
from shrinkformer.translate import Translator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--batch1-sentences", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = read_parallel(DATA, args.split, "en", "de")
    rows = {}
    for path in args.models:
        cfg, tok, model = load_any(path)
        row = {"native_step_available": native_engine(model.eval()) is not None}
        for name, batch, lines in (("batched", 64, data.source), ("batch1", 1, data.source[: args.batch1_sentences])):
            out, seconds = {}, {}
            for native in (True, False):
                started = time.perf_counter()
                out[native] = Translator(model, tok, cfg.decode, batch_sentences=batch, native=native).translate(lines)
                seconds[native] = time.perf_counter() - started
            refs = data.target[: len(lines)]
            row[name] = {"sentences": len(lines),
                         "identical_lines": sum(a == b for a, b in zip(out[True], out[False])),
                         "bleu_native": score(out[True], refs).bleu, "bleu_pytorch": score(out[False], refs).bleu,
                         "seconds_native": round(seconds[True], 2), "seconds_pytorch": round(seconds[False], 2)}
            print(path.name, name, row[name], file=sys.stderr)
        rows[path.name] = row
    report("native_steps", {"command": "python native_steps.py " + shlex.join(sys.argv[1:]), "split": args.split,
                            "models": rows}, args.out)


if __name__ == "__main__":
    main()
