"""results.json, results.csv and report.md from the sweep's rows. Every figure comes from the rows;
the findings are sentences built from them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .grid import GRID, STUDY_WMT
from ..io import write_text_atomic
from .sweep import ROW_FIELDS


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def write_results(result: dict[str, Any], output: Path) -> None:
    write_text_atomic(output / "results.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result["rows"]:
        writer.writerow(row)
    write_text_atomic(output / "results.csv", buf.getvalue())
    write_text_atomic(output / "report.md", render(result))


def _row(rows: list[dict], name: str) -> dict | None:
    r = next((r for r in rows if r["name"] == name), None)
    return r if r and r.get("status") == "ok" else None


def findings(rows: list[dict]) -> list[str]:
    out = []
    pct = lambda r: 100 * r["bleu_retention"]  # noqa: E731
    k4, k1 = _row(rows, "kmeans-4bit-all"), _row(rows, "kmeans-1bit-all")
    if k4 and k1:
        out.append(f"**k-means quantization.** At 4 bits on every Linear layer the model keeps {pct(k4):.1f}% of the "
                   f"baseline BLEU at {k4['compression_ratio']:.1f}x (whole model); at 1 bit it keeps {pct(k1):.1f}% "
                   f"at {k1['compression_ratio']:.1f}x. " + ("The study saw the same collapse at 1 bit (43%)."
                                                             if pct(k1) < 60 else "Unlike the study (43%), 1-bit "
                                                             "k-means with retraining holds up here."))
    for scope in ("self-attention", "all"):
        flex, fixed = _row(rows, f"bsflex-{scope}"), _row(rows, f"binary-fixed-{scope}")
        if flex and fixed:
            verdict = "at least as good as" if flex["bleu"] >= fixed["bleu"] else "worse than"
            out.append(f"**BS-Flex vs fixed binarization ({scope}).** BS-Flex reaches {flex['bleu']:.2f} BLEU "
                       f"({pct(flex):.1f}%), fixed centroids {fixed['bleu']:.2f} ({pct(fixed):.1f}%): BS-Flex is "
                       f"{verdict} the original scheme here.")
    km1sa, flexsa = _row(rows, "kmeans-1bit-self-attention"), _row(rows, "bsflex-self-attention")
    if km1sa and flexsa:
        out.append(f"**Binarizing self-attention only.** 1-bit k-means keeps {pct(km1sa):.1f}% and BS-Flex "
                   f"{pct(flexsa):.1f}% of the baseline with {100 * flexsa['params_compressed_share']:.0f}% of the "
                   "parameters at one bit each.")
    quant = [r for r in rows if r.get("status") == "ok" and r["method"] in ("kmeans", "bsflex", "binary-fixed")]
    for name in ("prune-30-50", "prune-50-80"):
        pr = _row(rows, name)
        if pr and quant:
            out.append(f"**Pruning vs quantization ({name}).** " + _compare_at_equal_ratio(pr, quant, pct))
    front = pareto(rows)
    if front:
        out.append(f"**Best trade-offs.** Counting BLEU differences under {TIE_BLEU} as ties, no other row is at "
                   "least as compressed with as much BLEU as: " + ", ".join(
            f"{r['name']} ({pct(r):.1f}% at {r['compression_ratio']:.1f}x)" for r in front) + ".")
    dc = _row(rows, "prune-50-80+kmeans-4bit-all")
    if dc:
        out.append(f"**Deep Compression order (prune 50→80%, then 4-bit k-means).** {pct(dc):.1f}% of the baseline "
                   f"at {dc['compression_ratio']:.1f}x for the whole model and {_fmt(dc['scope_compression_ratio'], '.1f')}x "
                   f"on the compressed layers ({_fmt(dc.get('huffman_scope_compression_ratio'), '.1f')}x with Huffman "
                   "coding).")
    d, nd = _row(rows, "bsflex-all-distill"), _row(rows, "bsflex-all")
    if d and nd:
        out.append(f"**Distillation.** BS-Flex on every layer keeps {pct(nd):.1f}% without and {pct(d):.1f}% with "
                   "distillation from the baseline.")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        out.append("**Failed experiments:** " + "; ".join(f"{r['name']} ({r.get('error')})" for r in failed))
    return out


TIE_BLEU = 0.5  # BLEU differences smaller than this count as ties in the comparisons below


def _compare_at_equal_ratio(pr: dict, quant: list[dict], pct) -> str:
    """Whether pruning row ``pr`` is worse than quantization at equal compression, by dominance: a
    quantization row at least as compressed with no less BLEU (within ``TIE_BLEU``) beats it."""
    said = f"{pr['name']} keeps {pct(pr):.1f}% at {pr['compression_ratio']:.2f}x. "
    better = [q for q in quant if q["compression_ratio"] >= pr["compression_ratio"] and q["bleu"] > pr["bleu"] - TIE_BLEU]
    if better:
        q = max(better, key=lambda q: q["compression_ratio"])
        return said + (f"{q['name']} keeps {pct(q):.1f}% at {q['compression_ratio']:.2f}x, as much BLEU (within "
                       f"{TIE_BLEU}) at a higher ratio: pruning is worse than quantization at equal compression here, "
                       "as the study found.")
    worse = [q for q in quant if q["compression_ratio"] <= pr["compression_ratio"] and q["bleu"] < pr["bleu"] - TIE_BLEU]
    if worse:
        q = max(worse, key=lambda q: q["compression_ratio"])
        return said + (f"{q['name']} keeps only {pct(q):.1f}% at a ratio no higher ({q['compression_ratio']:.2f}x): "
                       "here pruning beats quantization at equal compression, unlike the study.")
    return said + "No quantization row is clearly better at a higher ratio or worse at a lower one: neither dominates."


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats, by ratio: beating means a ratio at least as high with no less BLEU
    (within ``TIE_BLEU``), and strictly more of one of them."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("bleu") is not None and r.get("bleu_retention") is not None]

    def beats(s: dict, r: dict) -> bool:
        return (s is not r and s["compression_ratio"] >= r["compression_ratio"] and s["bleu"] > r["bleu"] - TIE_BLEU
                and (s["compression_ratio"] > r["compression_ratio"] or s["bleu"] > r["bleu"]))

    return sorted((r for r in ok if not any(beats(s, r) for s in ok)), key=lambda r: r["compression_ratio"])


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = _row(rows, "baseline")
    lines = [f"# Compressing a Transformer: preset `{result['preset']}`", "",
             f"Command: `{result.get('command', '')}`  ",
             f"Commit {result.get('git_commit', '?')}, torch {result.get('torch_version', '?')}, "
             f"{result.get('machine', {}).get('processor', '?')} with {result.get('machine', {}).get('cpus', '?')} CPUs"
             f"{', GPU ' + result['machine']['gpu'] if result.get('machine', {}).get('gpu') else ''}; "
             f"this run took {result.get('wall_seconds', 0) / 60:.1f} min, the experiments' own wall times add up "
             f"to {sum(r.get('wall_seconds') or 0 for r in rows) / 60:.1f} min.  ",
             "Experiments come from the cache when their configuration, preset and baseline model are unchanged; "
             "a cached row keeps the numbers (and, where recorded, the `git_commit`) of the run that computed it.",
             ""]
    if base:
        lines += [f"Baseline: {base['bleu']:.2f} BLEU, {base['chrf']:.2f} chrF on the test split "
                  f"(`{base.get('bleu_signature', '')}`).", ""]
    lines += ["| experiment | in study | BLEU | % of baseline | ratio (model) | ratio (scope) | ratio (scope, Huffman) "
              "| compressed params | study WMT BLEU | study % |", "|---|---|---|---|---|---|---|---|---|---|"]
    in_study = {e.name: e.in_study for e in GRID}
    for r in rows:
        study = STUDY_WMT.get(r["name"], (None, None))
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {'yes' if in_study.get(r['name']) else ''} | failed | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {'yes' if in_study.get(r['name']) else ''} | {r['bleu']:.2f} | "
                     f"{_fmt(100 * r['bleu_retention'] if r.get('bleu_retention') is not None else None, '.1f')} | "
                     f"{r['compression_ratio']:.2f}x | {_fmt(r.get('scope_compression_ratio'), '.1f')}"
                     f"{'x' if r.get('scope_compression_ratio') else ''} | "
                     f"{_fmt(r.get('huffman_scope_compression_ratio'), '.1f')}"
                     f"{'x' if r.get('huffman_scope_compression_ratio') else ''} | "
                     f"{100 * r['params_compressed_share']:.1f}% | {_fmt(study[0])} | {_fmt(study[1], '.1f')} |")
    lines += ["", "Ratios are fp32 file size / packed file size, measured on the files written "
              "(`models/*.sfz`); the scope ratio counts only the compressed layers, and the Huffman column adds Deep "
              "Compression's entropy stage (`models/*.huffman.sfz`). The study's figures are WMT "
              "En–De with Transformer base, shown for comparison, not reproduced by this run.", "",
              "![BLEU vs compression](bleu_vs_compression.png)", "", "## Findings", ""]
    lines += [f + "\n" for f in findings(rows)]
    return "\n".join(lines)
