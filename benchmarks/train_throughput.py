"""Training-step throughput of shrinkformer's Transformer vs torch.nn.Transformer of identical size.

Both models get the same Multi30k batches, the same loss (label-smoothed cross-entropy), Adam and
dropout; rounds alternate between them so machine noise hits both alike. Reported: target tokens
per second (median over rounds) and ours / reference. Bar: >= 1.0x.

    python benchmarks/train_throughput.py [--preset small] [--steps 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import interleaved, median, multi30k_batches, report, timed
from shrinkformer.model import MODEL_PRESETS, Transformer
from shrinkformer.model.transformer import PAD, sinusoids


class TorchReference(nn.Module):
    """The same architecture built from torch.nn.Transformer: shared embeddings, sinusoidal
    positions, pre-norm layers, tied output projection."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)
        self.core = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff,
                                   cfg.dropout, batch_first=True, norm_first=cfg.pre_norm)

    def forward(self, src, tgt):
        def emb(x):
            return F.dropout(self.embed(x) * math.sqrt(self.cfg.d_model) + self.positions[: x.shape[1]],
                             self.cfg.dropout, self.training)
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=torch.float32)
        src_pad, tgt_pad = src.eq(PAD), tgt.eq(PAD)
        h = self.core(emb(src), emb(tgt), tgt_mask=causal, src_key_padding_mask=src_pad,
                      tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return F.linear(h, self.embed.weight)


def step_fn(model, optimizer, batches):
    def run() -> float:
        def go():
            for b in batches:
                out = model(b.src, b.tgt_in)
                logits = out[0] if isinstance(out, tuple) else out
                loss = F.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD,
                                       label_smoothing=0.1, reduction="sum")
                (loss / b.target_tokens).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return timed(go)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=10, help="training steps per round and model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args()

    tok, batches = multi30k_batches(args.steps)
    cfg = dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=len(tok))
    torch.manual_seed(0)
    ours, ref = Transformer(cfg).train(), TorchReference(cfg).train()
    n_ours, n_ref = (sum(p.numel() for p in m.parameters()) for m in (ours, ref))
    assert n_ours == n_ref, f"parameter counts differ: {n_ours} vs {n_ref}"
    fns = {name: step_fn(m, torch.optim.Adam(m.parameters(), lr=1e-4), batches)
           for name, m in (("shrinkformer", ours), ("torch.nn.Transformer", ref))}
    for fn in fns.values():  # warm-up
        fn()
    times = interleaved(fns, args.rounds)
    tokens = sum(b.target_tokens for b in batches)
    rate = {k: tokens / median(v) for k, v in times.items()}
    report("train_throughput", {
        "benchmark": "train_throughput", "preset": args.preset, "parameters": n_ours,
        "steps_per_round": args.steps, "rounds": args.rounds, "target_tokens_per_round": tokens,
        "tokens_per_second": {k: round(v, 1) for k, v in rate.items()},
        "ratio_ours_over_torch": round(rate["shrinkformer"] / rate["torch.nn.Transformer"], 3),
        "bar": ">= 1.0",
    }, args.out)


if __name__ == "__main__":
    main()
