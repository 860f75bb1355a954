"""How much precision does self-attention need? Record the encoder and decoder self-attention
probabilities on real sentences, replace them by k values (k-means levels fitted per layer, or k
uniform levels on [0, 1]), compare the distributions, and decode with the quantized attention in
place.

A quantized row is renormalised to sum to one, so it stays an attention distribution: it is the k
levels up to one scale factor per row.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from ..compress.primitives import kmeans_1d
from ..evaluate.bleu import score
from ..model.probe import AttentionProbe, Recorded

log = logging.getLogger(__name__)
EPS = 1e-12


def uniform_levels(k: int) -> Tensor:
    return torch.linspace(0.0, 1.0, k)


def kmeans_levels(values: Tensor, k: int, sample: int = 2_000_000) -> Tensor:
    v = values.flatten()
    if v.numel() > sample:  # a fixed stride keeps it deterministic
        v = v[:: v.numel() // sample + 1]
    return kmeans_1d(v, k, init="linear")[0]


def quantizer(levels: Tensor) -> Callable[[Tensor], Tensor]:
    """Nearest level for every probability, then each row renormalised (masked keys stay zero)."""
    mid = (levels[1:] + levels[:-1]) / 2

    def q(p: Tensor) -> Tensor:
        out = levels.to(p.dtype)[torch.bucketize(p, mid.to(p.dtype))]
        out = torch.where(p > 0, out, torch.zeros((), dtype=p.dtype))  # padding and the future stay masked
        total = out.sum(-1, keepdim=True)
        # A row whose every value fell to zero attends to its largest key alone: the nearest
        # distribution the levels can express, rather than attending nowhere.
        one_hot = torch.zeros_like(p).scatter_(-1, p.argmax(-1, keepdim=True), 1.0)
        return torch.where(total > 0, out / total.clamp(min=EPS), one_hot)

    return q


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats) between rows of p and q, (..., S) -> (...)."""
    m = (p + q) / 2

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log(a.clamp(min=EPS)) - torch.log(b.clamp(min=EPS))), 0.0).sum(-1)
    return (kl(p, m) + kl(q, m)) / 2


def compare(rec: Recorded, k: int, kind: str) -> tuple[dict[str, Tensor], dict]:
    """Levels per layer, and per layer and head the mean JS divergence and max |difference|."""
    levels, stats = {}, {}
    for name, maps in rec.layers.items():
        values = torch.cat([m.flatten() for m in maps])
        levels[name] = kmeans_levels(values, k) if kind == "kmeans" else uniform_levels(k)
        q = quantizer(levels[name])
        heads = maps[0].shape[0]
        js_sum, rows, max_diff = torch.zeros(heads), 0, torch.zeros(heads)
        for m in maps:
            qm = q(m)
            js_sum += js_divergence(m.double(), qm.double()).sum(-1).float()
            rows += m.shape[1]
            max_diff = torch.maximum(max_diff, (m - qm).abs().flatten(1).max(1).values)
        stats[name] = {"js_mean": (js_sum / rows).tolist(), "max_abs_diff": max_diff.tolist()}
    return levels, stats


def decode_with(probe: AttentionProbe, levels: dict[str, Tensor] | None, sources: list[str]) -> list[str]:
    """Translate with every self-attention's probabilities replaced by its layer's quantized ones."""
    mods = probe.self_attention()
    try:
        if levels is not None:
            for name, lv in levels.items():
                mods[name].prob_transform = quantizer(lv)
        return probe.translate(sources)
    finally:
        for m in mods.values():
            m.prob_transform = None


def analyse(probe: AttentionProbe, record_src: list[str], record_tgt: list[str], test_src: list[str],
            test_ref: list[str], ks: list[int], kinds: tuple[str, ...] = ("kmeans", "uniform")) -> dict:
    rec = probe.record(record_src, record_tgt)
    base = score(decode_with(probe, None, test_src), test_ref)
    log.info("unquantized attention: BLEU %.2f", base.bleu)
    results: dict = {"unquantized_bleu": base.bleu, "bleu_signature": base.bleu_signature,
                     "record_sentences": len(record_src), "test_sentences": len(test_src), "levels": {}}
    for kind in kinds:
        for k in ks:
            levels, stats = compare(rec, k, kind)
            bleu = score(decode_with(probe, levels, test_src), test_ref).bleu
            log.info("%s, k=%d: BLEU %.2f", kind, k, bleu)
            results["levels"].setdefault(kind, {})[str(k)] = {
                "bleu": bleu, "bleu_delta": round(bleu - base.bleu, 2), "layers": stats,
                "js_mean": sum(sum(s["js_mean"]) / len(s["js_mean"]) for s in stats.values()) / len(stats),
                "max_abs_diff": max(max(s["max_abs_diff"]) for s in stats.values()),
                "level_values": {n: [round(float(x), 6) for x in lv] for n, lv in levels.items()}}
        ok = [k for k in ks if abs(results["levels"][kind][str(k)]["bleu_delta"]) <= 0.3]
        results.setdefault("smallest_k_within_0.3_bleu", {})[kind] = min(ok) if ok else None
    results["_recorded"] = rec  # for the histogram; dropped before writing JSON
    return results


def render(results: dict, command: str) -> str:
    lines = ["# Self-attention under quantization", "", f"Command: `{command}`  ",
             f"Attention recorded on {results['record_sentences']} validation sentences (teacher forced); BLEU "
             f"on {results['test_sentences']} test sentences, beam {results.get('beam', '?')}. Unquantized: "
             f"{results['unquantized_bleu']:.2f} BLEU (`{results['bleu_signature']}`).", "",
             "| levels | k | BLEU | Δ BLEU | mean JS divergence | max abs difference |", "|---|---|---|---|---|---|"]
    for kind, per_k in results["levels"].items():
        for k, r in per_k.items():
            lines.append(f"| {kind} | {k} | {r['bleu']:.2f} | {r['bleu_delta']:+.2f} | {r['js_mean']:.2e} | "
                         f"{r['max_abs_diff']:.3f} |")
    lines += [""]
    for kind, k in results["smallest_k_within_0.3_bleu"].items():
        lines.append(f"- {kind} levels: " + (f"the smallest k within 0.3 BLEU of the unquantized model is **{k}**."
                                             if k else "no k tried stays within 0.3 BLEU."))
    r16 = results["levels"].get("kmeans", {}).get("16")
    if r16:
        lines.append(f"- With 16 k-means values the BLEU changes by {r16['bleu_delta']:+.2f} and the mean JS "
                     f"divergence per attention row is {r16['js_mean']:.2e} nats.")
    lines += ["", "![attention histograms](attention_hist.png)", "", "## Per layer and head (k-means, 16 values)", "",
              "| layer | JS divergence per head | max abs difference per head |", "|---|---|---|"]
    for name, st in (r16 or {}).get("layers", {}).items():
        lines.append(f"| {name} | {', '.join(f'{x:.1e}' for x in st['js_mean'])} | "
                     f"{', '.join(f'{x:.3f}' for x in st['max_abs_diff'])} |")
    return "\n".join(lines) + "\n"
