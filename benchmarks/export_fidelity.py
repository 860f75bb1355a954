"""Does a CTranslate2 export translate as shrinkformer does? For each model and quantization: the
share of test lines translated identically, and both BLEU scores with a paired bootstrap test.

    python benchmarks/export_fidelity.py results/multi30k/models/baseline.sfz \
        results/multi30k/models/kmeans-4bit-all.sfz --out results/multi30k/export.json

Bars (issue: runtime and export): float32 >= 99% identical lines and BLEU within 0.1; int8 within
0.3 BLEU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, report

from shrinkformer.data.corpus import read_parallel
from shrinkformer.evaluate.bleu import score
from shrinkformer.evaluate.significance import paired_bootstrap
from shrinkformer.export.ctranslate2 import CTranslate2Translator, export
from shrinkformer.loading import load_any
from shrinkformer.translate import Translator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help=".pt or .sfz models")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--quantizations", default="float32,int8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import ctranslate2

    data = read_parallel(DATA, args.split, "en", "de")
    rows = []
    for path in args.models:
        cfg, tok, model = load_any(path)
        started = time.perf_counter()
        ours = Translator(model, tok, cfg.decode).translate(data.source)
        ours_seconds = time.perf_counter() - started
        ours_bleu = score(ours, data.target).bleu
        for q in args.quantizations.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                out = export(model, tok, Path(tmp) / "ct2", q)
                engine = CTranslate2Translator(out, beam_size=cfg.decode.beam_size,
                                               length_penalty=cfg.decode.length_penalty, max_len_a=cfg.decode.max_len_a,
                                               max_len_b=cfg.decode.max_len_b, threads=args.threads)
                started = time.perf_counter()
                theirs = engine.translate(data.source)
                seconds = time.perf_counter() - started
            test = paired_bootstrap(("shrinkformer", ours), [("ctranslate2", theirs)], data.target, args.split)[0]
            identical = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
            bar = (identical >= 0.99 and abs(test.delta) <= 0.1) if q == "float32" else abs(test.delta) <= 0.3
            rows.append({"model": str(path), "quantization": q, "sentences": len(ours), "beam_size": cfg.decode.beam_size,
                         "shrinkformer_bleu": ours_bleu,
                         "ctranslate2_bleu": test.bleu_b, "delta_bleu": test.delta, "p_value": test.p_value,
                         "identical_lines": round(identical, 4), "meets_bar": bar,
                         "shrinkformer_seconds": round(ours_seconds, 2), "ctranslate2_seconds": round(seconds, 2)})
            print(rows[-1], file=sys.stderr)
    report("export_fidelity", {"command": shlex.join(["python", *sys.argv]), "split": args.split,
                               "ctranslate2": ctranslate2.__version__, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
