"""Peak memory on the base preset (d_model 512, 6 + 6 layers, tied 32000-token embedding): the fp32
model against the same model packed at 4 bits (every Linear and the embedding), each loaded from its
.sfz in a fresh process and decoding at batch 1, alternating rounds, median. Random weights and
random source ids, as in ``base_latency.py``; the tokenizer stored with both files is a small one
trained on Multi30k (decoding here never reads it).

Per model: the process's resident memory once torch is imported (the floor no model choice moves),
its peak by the end of loading and by the end of decoding, and the model's resident weight bytes.

    python benchmarks/base_memory.py --out results/benchmarks/base_memory.json

Bar (issue: runtime): peak RSS of the packed 4-bit model <= 0.7x the fp32 model's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA, median, peak_rss_bytes, report, rss_bytes


def child(path: str, sentences: int, source_tokens: int) -> dict:
    import torch

    torch.set_num_threads(1)
    floor = rss_bytes()
    from shrinkformer.inference.layers import resident_weight_bytes
    from shrinkformer.loading import load_any
    from shrinkformer.model.search import SearchConfig, beam_search

    _, _, model = load_any(path)
    loaded = peak_rss_bytes()
    g = torch.Generator().manual_seed(0)
    for _ in range(sentences):
        beam_search(model, torch.randint(4, model.cfg.vocab_size, (1, source_tokens), generator=g), SearchConfig(5))
    return {"rss_after_import_bytes": floor, "peak_after_load_bytes": loaded, "peak_rss_bytes": peak_rss_bytes(),
            "resident_weight_bytes": resident_weight_bytes(model), "file_bytes": Path(path).stat().st_size}


def write_models(tmp: Path) -> dict[str, Path]:
    import torch

    from shrinkformer.compress import KMeansConfig, compress
    from shrinkformer.config import RunConfig
    from shrinkformer.data.corpus import read_parallel
    from shrinkformer.data.tokenizer import Tokenizer
    from shrinkformer.model import MODEL_PRESETS, Transformer
    from shrinkformer.pack.format import write_packed

    raw = read_parallel(DATA, "train", "en", "de", limit=4000)
    tok = Tokenizer.train(raw.source + raw.target, 2000)
    cfg = RunConfig(preset="base", model=MODEL_PRESETS["base"])
    torch.manual_seed(0)
    model = Transformer(cfg.model).eval()
    paths = {"fp32": tmp / "fp32.sfz", "packed 4-bit": tmp / "kmeans4.sfz"}
    write_packed(model, cfg, tok, paths["fp32"])
    compress(model, KMeansConfig(4), ["all", "embeddings"])
    write_packed(model, cfg, tok, paths["packed 4-bit"])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=2, help="sources decoded one at a time per process")
    p.add_argument("--source-tokens", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sentences, args.source_tokens)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_models(Path(tmp))
        runs: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                cmd = [sys.executable, __file__, "--child", str(path), "--sentences", str(args.sentences),
                       "--source-tokens", str(args.source_tokens)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(name, runs[name][-1], file=sys.stderr)
    rows = {name: {k: median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for row in rows.values():
        row["peak_rss_vs_fp32"] = round(row["peak_rss_bytes"] / rows["fp32"]["peak_rss_bytes"], 3)
        # what the model choice moves: the peak above the floor torch itself takes
        row["peak_above_import_vs_fp32"] = round(
            (row["peak_rss_bytes"] - row["rss_after_import_bytes"])
            / (rows["fp32"]["peak_rss_bytes"] - rows["fp32"]["rss_after_import_bytes"]), 3)
    report("base_memory", {"command": shlex.join(["python", *sys.argv]), "preset": "base", "beam": 5,
                           "sentences": args.sentences, "source_tokens": args.source_tokens,
                           "rounds": args.rounds, "models": rows}, args.out)


if __name__ == "__main__":
    main()
