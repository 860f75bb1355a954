"""What each of the runtime's two inexact options costs in BLEU, apart: the 4-bit model on a test
split in batches of 64, exact, with ``int8`` (4-bit layers with int8 activations), and with
``int8`` and ``half_cache`` (attention keys and values in float16), each against the one before it
with sacreBLEU's paired bootstrap, and the lines each leaves as they were. Speed and memory are
benchmarks/runtime.py's; this is only the quality of each step:

    python benchmarks/int8_cache.py --out results/benchmarks/int8_cache.json
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import sys
from pathlib import Path

from output import write  # benchmarks/output.py
from shrinkformer.evaluate.significance import paired_bootstrap
from shrinkformer.runtime.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHRINKFORMER_DATA", ROOT.parent / "shared" / "data" / "multi30k"))
MODEL = ROOT / "results" / "multi30k" / "models" / "kmeans-4bit-all+embeddings.sfz"
MODES = {"exact": {}, "int8": {"int8": True}, "int8 + half cache": {"int8": True, "half_cache": True}}


def lines(split: str, lang: str) -> list[str]:
    with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    source, refs = lines(args.split, "en"), lines(args.split, "de")
    hyps = {name: Translator.load(MODEL, batch_sentences=64, threads=args.threads, **options).translate(source)
            for name, options in MODES.items()}
    steps = []
    names = list(MODES)
    for a, b in [(names[0], names[1]), (names[1], names[2]), (names[0], names[2])]:
        test = paired_bootstrap((a, hyps[a]), [(b, hyps[b])], refs, args.split)[0]
        steps.append({"from": a, "to": b, "bleu_from": test.bleu_a, "bleu_to": test.bleu_b, "delta": test.delta,
                      "p_value": round(test.p_value, 4), "significant": test.significant,
                      "identical_lines": sum(x == y for x, y in zip(hyps[a], hyps[b])), "of": len(source)})
    result = {"command": "python benchmarks/int8_cache.py " + shlex.join(sys.argv[1:]), "model": MODEL.name,
              "split": args.split, "batch_sentences": 64, "steps": steps}
    write(result, args.out)


if __name__ == "__main__":
    main()
