"""End-to-end decoding: shrinkformer fp32, packed models, and CTranslate2 on the same weights.

Each measurement runs in a fresh process (peak RSS is per process), engines alternating, median of
rounds. Per engine: sentences/s on the split (beam 5, batches of 64), batch-1 ms per sentence over
the first 100 sentences, peak RSS, resident weight bytes, BLEU.

    python benchmarks/inference.py --fp32 results/multi30k/models/baseline.sfz \
        --packed kmeans-4bit-all=results/multi30k/models/kmeans-4bit-all.sfz \
        --pytorch-steps kmeans-4bit-all=results/multi30k/models/kmeans-4bit-all.sfz \
        --ctranslate2 results/multi30k/models/baseline.sfz --out results/benchmarks/inference.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, peak_rss_bytes, report


def child(engine: str, path: str, split: str, sentences: int | None, latency_sentences: int, threads: int) -> dict:
    if engine.startswith("ctranslate2@"):  # CTranslate2 with its own thread count
        engine, threads = "ctranslate2", int(engine.split("@")[1])
    import torch

    torch.set_num_threads(threads)
    from shrinkformer.inference.layers import resident_weight_bytes
    from shrinkformer.data.corpus import read_parallel
    from shrinkformer.evaluate.bleu import score

    data = read_parallel(DATA, split, "en", "de", sentences)
    if engine.startswith("ctranslate2"):
        from shrinkformer.export.ctranslate2 import CTranslate2Translator
        translator, resident = CTranslate2Translator(Path(path), threads=threads), None
        translate = translator.translate

        def one(lines):  # the same engine (a second one would start a second thread pool)
            translator.batch_sentences = 1
            return translator.translate(lines)
    else:
        from shrinkformer.loading import load_any
        from shrinkformer.translate import Translator
        cfg, tok, model = load_any(path, training=engine == "dense")
        resident = resident_weight_bytes(model)
        native = engine != "pytorch-steps"
        translate = Translator(model, tok, cfg.decode, native=native).translate
        one = Translator(model, tok, cfg.decode, batch_sentences=1, native=native).translate
    started = time.perf_counter()
    hyps = translate(data.source)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    one(data.source[:latency_sentences])
    latency = (time.perf_counter() - started) / latency_sentences
    return {"sentences_per_second": len(hyps) / seconds, "batch1_ms_per_sentence": 1e3 * latency,
            "peak_rss_bytes": peak_rss_bytes(),
            "resident_weight_bytes": resident, "file_bytes": None if resident is None else Path(path).stat().st_size,
            "bleu": score(hyps, data.target).bleu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fp32", help="the uncompressed model (.pt or .sfz)")
    p.add_argument("--packed", action="append", default=[], metavar="NAME=PATH", help="a packed model (repeatable)")
    p.add_argument("--dense", action="append", default=[], metavar="NAME=PATH",
                   help="a packed model in its training (decompressed) form, for comparison")
    p.add_argument("--pytorch-steps", action="append", default=[], metavar="NAME=PATH",
                   help="a packed model decoded with PyTorch modules only (no native decoding step), for comparison")
    p.add_argument("--ctranslate2", help="export this model to CTranslate2 float32 and int8 and time those too")
    p.add_argument("--ctranslate2-threads", help="comma-separated thread counts for CTranslate2 (default: 1 and "
                                                 "--threads; its best is the fair reference)")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--sentences", type=int, help="only the first N sentences of the split")
    p.add_argument("--latency-sentences", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.split, args.sentences, args.latency_sentences, args.threads)))
        return

    engines: dict[str, tuple[str, str]] = {}
    if args.fp32:
        engines["shrinkformer fp32"] = ("fp32", args.fp32)
    for spec in args.packed:
        name, path = spec.split("=", 1)
        engines[f"shrinkformer packed {name}"] = ("packed", path)
    for spec in args.dense:
        name, path = spec.split("=", 1)
        engines[f"shrinkformer dense {name}"] = ("dense", path)
    for spec in args.pytorch_steps:
        name, path = spec.split("=", 1)
        engines[f"shrinkformer packed {name}, PyTorch steps"] = ("pytorch-steps", path)
    with tempfile.TemporaryDirectory() as tmp:
        if args.ctranslate2:
            from shrinkformer.export.ctranslate2 import export
            from shrinkformer.loading import load_any
            _, tok, model = load_any(args.ctranslate2)
            # Both thread counts by default: which is CTranslate2's best varies (in inference.json two
            # threads are its faster for float32, one for int8). A fair reference is its best.
            for q in ("float32", "int8"):
                out = str(export(model, tok, Path(tmp) / q, q))
                counts = args.ctranslate2_threads.split(",") if args.ctranslate2_threads else (1, args.threads)
                for t in sorted({int(c) for c in counts}):
                    engines[f"ctranslate2 {q}, {t} thread{'s' if t > 1 else ''}"] = (f"ctranslate2@{t}", out)
        runs: dict[str, list[dict]] = {k: [] for k in engines}
        for _ in range(args.rounds):
            for name, (engine, path) in engines.items():
                cmd = [sys.executable, __file__, "--child", engine, path, "--split", args.split, "--threads",
                       str(args.threads), "--latency-sentences", str(args.latency_sentences)]
                if args.sentences:
                    cmd += ["--sentences", str(args.sentences)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(name, runs[name][-1], file=sys.stderr)
    rows = {}
    for name, rs in runs.items():
        rows[name] = {k: (statistics.median(r[k] for r in rs) if rs[0][k] is not None else None) for k in rs[0]}
        if args.fp32:
            base = runs["shrinkformer fp32"]
            rows[name]["throughput_vs_fp32"] = round(rows[name]["sentences_per_second"]
                                                     / statistics.median(r["sentences_per_second"] for r in base), 3)
            rows[name]["batch1_speedup_vs_fp32"] = round(statistics.median(r["batch1_ms_per_sentence"] for r in base)
                                                         / rows[name]["batch1_ms_per_sentence"], 3)
            rows[name]["peak_rss_vs_fp32"] = round(rows[name]["peak_rss_bytes"]
                                                   / statistics.median(r["peak_rss_bytes"] for r in base), 3)
        ct2 = [n for n in runs if n.startswith("ctranslate2 float32")]
        if ct2 and name.startswith("shrinkformer"):  # the bars: against CTranslate2 float32 at its best thread count
            best_ms = min(statistics.median(r["batch1_ms_per_sentence"] for r in runs[n]) for n in ct2)
            best_rate = max(statistics.median(r["sentences_per_second"] for r in runs[n]) for n in ct2)
            rows[name]["batch1_latency_vs_ctranslate2_float32_best"] = round(
                rows[name]["batch1_ms_per_sentence"] / best_ms, 3)
            rows[name]["throughput_vs_ctranslate2_float32_best"] = round(
                rows[name]["sentences_per_second"] / best_rate, 3)
        if rows[name]["file_bytes"]:  # the bar: resident weights of a packed model <= 1.15x its file
            rows[name]["resident_vs_file"] = round(rows[name]["resident_weight_bytes"] / rows[name]["file_bytes"], 3)
    report("inference", {"command": shlex.join(["python", *sys.argv]), "split": args.split,
                         "rounds": args.rounds, "engines": rows}, args.out)


if __name__ == "__main__":
    main()
