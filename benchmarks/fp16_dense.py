"""What storing the uncompressed parameters in fp16 costs: a model decoded with its biases and
layer norms rounded to fp16 (what ``--dense-dtype fp16`` does to a compressed model), and with
every parameter rounded (the worst case: a model left entirely dense), against the same model in
fp32 — identical lines, BLEU and a paired bootstrap test on each test split.

    python benchmarks/fp16_dense.py results/multi30k/models/baseline.sfz --out results/benchmarks/fp16_dense.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from common import DATA, report

from shrinkformer.data.corpus import read_parallel
from shrinkformer.evaluate.bleu import score
from shrinkformer.evaluate.significance import paired_bootstrap
from shrinkformer.loading import load_any
from shrinkformer.translate import Translator


def rounded(model: torch.nn.Module, everything: bool) -> dict[str, torch.Tensor]:
    """The state dict with biases and norms (or every float tensor) rounded through fp16."""
    out = {}
    for k, v in model.state_dict().items():
        small = not k.endswith(".weight") or v.dim() == 1  # biases, and the norms' gains
        out[k] = v.half().float() if v.is_floating_point() and (everything or small) else v
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--splits", default="test_2016_flickr,test_2017_flickr,test_2017_mscoco")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg, tok, model = load_any(args.model)
    fp32 = {k: v.clone() for k, v in model.state_dict().items()}
    variants = {"fp32": fp32, "fp16 biases and norms": rounded(model, False), "fp16 everything": rounded(model, True)}
    result: dict = {"command": "python " + shlex.join(sys.argv), "model": str(args.model), "splits": {}}
    for split in args.splits.split(","):
        data = read_parallel(DATA, split, "en", "de")
        hyps = {}
        for name, state in variants.items():
            model.load_state_dict(state)
            hyps[name] = Translator(model, tok, cfg.decode).translate(data.source)
        comps = paired_bootstrap(("fp32", hyps["fp32"]), [(n, h) for n, h in hyps.items() if n != "fp32"],
                                 data.target, split)
        result["splits"][split] = {
            name: {"bleu": score(h, data.target).bleu,
                   "identical_lines": sum(a == b for a, b in zip(h, hyps["fp32"])) / len(h),
                   **({"p_value": c.p_value, "delta": round(c.delta, 3)} if (c := next(
                       (c for c in comps if c.b == name), None)) else {})}
            for name, h in hyps.items()}
    report("fp16_dense", result, args.out)


if __name__ == "__main__":
    main()
