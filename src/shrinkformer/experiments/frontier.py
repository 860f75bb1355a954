"""The quality frontier: retention against the whole-model ratio, readable with 30 rows.

Each compressed row gets a number (by ratio), so the plot carries numbers instead of 30 names piled
on each other and the report's table says which is which; the HTML version beside the PNG shows a
row's name and figures on hover and needs nothing but a browser (one file, no scripts). Per ratio
band, the row that holds up best on every test set (the highest retention on its weakest set). The
study's own points (WMT, its table has no ratios) are drawn at the ratio of our row of the same
method, as hollow markers.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from ..io import write_text_atomic
from .grid import STUDY_WMT

BANDS = ((1, 4), (4, 8), (8, 16), (16, 25), (25, 32), (32, 50), (50, math.inf))


def points(rows: list[dict[str, Any]], splits: Sequence[str]) -> list[dict[str, Any]]:
    """The compressed rows with a whole-model ratio and retention, numbered by ratio: each with
    its retention (%) on every split and on its weakest."""
    out = []
    for r in rows:
        if r.get("status") != "ok" or r["method"] == "none" or not r.get("model_compression_ratio") \
                or r.get("bleu_retention") is None:
            continue
        per = {s: 100 * t["bleu_retention"] for s, t in r.get("tests", {}).items()
               if s in splits and t.get("bleu_retention") is not None}
        if not per:
            per = {splits[0] if splits else "test": 100 * r["bleu_retention"]}
        out.append({"name": r["name"], "method": r["method"], "ratio": r["model_compression_ratio"],
                    "retention": 100 * r["bleu_retention"], "per_split": per, "weakest": min(per.values()),
                    "study": STUDY_WMT.get(r["name"], (None, None))[1]})
    out.sort(key=lambda p: (p["ratio"], p["name"]))
    for i, p in enumerate(out, 1):
        p["number"] = i
    return out


def bands(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ratio band with rows in it, the row with the highest retention on its weakest test set."""
    out = []
    for lo, hi in BANDS:
        inside = [p for p in pts if lo <= p["ratio"] < hi]
        if inside:
            best = max(inside, key=lambda p: (p["weakest"], p["ratio"]))
            out.append({"band": f"{lo}–{hi:g}x" if hi != math.inf else f"≥ {lo}x", "rows": len(inside), "best": best})
    return out


def markdown(pts: list[dict[str, Any]], splits: Sequence[str]) -> list[str]:
    """The report's frontier section: the best row per band, then the numbered points."""
    if not pts:
        return []
    lines = ["## The frontier", "",
             "Retention (% of the baseline's BLEU) against the whole-model ratio (4 bytes per parameter over the "
             "packed file). Per ratio band, the row that holds up best on every test set (highest retention on its "
             "weakest):", "",
             "| band | rows | best | ratio | " + " | ".join(f"% {s}" for s in splits) + " |",
             "|---" * (4 + len(splits)) + "|"]
    for b in bands(pts):
        p = b["best"]
        lines.append(f"| {b['band']} | {b['rows']} | {p['name']} | {p['ratio']:.2f}x | "
                     + " | ".join(_pct(p["per_split"].get(s)) for s in splits) + " |")
    lines += ["", "![frontier](frontier.png)", "",
              "The points by number (`frontier.html` shows the same plot with each row's figures on hover); the "
              "study's WMT retention, where it ran the same method, is drawn hollow at our row's ratio:", "",
              "| # | row | ratio | " + " | ".join(f"% {s}" for s in splits) + " | study % (WMT) |",
              "|---" * (4 + len(splits)) + "|"]
    for p in pts:
        lines.append(f"| {p['number']} | {p['name']} | {p['ratio']:.2f}x | "
                     + " | ".join(_pct(p["per_split"].get(s)) for s in splits) + f" | {_pct(p['study'])} |")
    return lines + [""]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def plot(pts: list[dict[str, Any]], path: Path, title: str) -> None:
    from .plots import MARKERS, _save, plt, ratio_axis

    fig, ax = plt.subplots(figsize=(11, 6))
    colors = {m: plt.cm.tab10(i) for i, m in enumerate(MARKERS)}
    for method, marker in MARKERS.items():
        mine = [p for p in pts if p["method"] == method]
        if mine:
            ax.scatter([p["ratio"] for p in mine], [p["retention"] for p in mine], marker=marker, s=60,
                       color=colors[method], label=method, zorder=3)
    study = [p for p in pts if p["study"] is not None]
    if study:
        ax.scatter([p["ratio"] for p in study], [p["study"] for p in study], marker="o", s=70, facecolors="none",
                   edgecolors="0.3", label="the study (WMT), at our row's ratio", zorder=2)
    front = _front(pts)
    ax.plot([p["ratio"] for p in front], [p["retention"] for p in front], color="0.35", linewidth=1, zorder=1,
            label="Pareto front")
    near: dict[tuple[float, float], list[dict[str, Any]]] = {}  # points drawn on top of each other share a label
    for p in pts:
        near.setdefault((round(math.log(p["ratio"]) * 40), round(p["retention"] * 1.5)), []).append(p)
    for group in near.values():
        ax.annotate(",".join(str(p["number"]) for p in group), (group[0]["ratio"], group[0]["retention"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7.5)
    ax.axhline(100, color="grey", linestyle="--", linewidth=1)
    ratio_axis(ax, [p["ratio"] for p in pts])
    ax.set_xlabel("compression ratio, whole model (log scale)")
    ax.set_ylabel("% of baseline BLEU (first test set)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title(title + " — numbers: the report's frontier table")
    fig.tight_layout()
    _save(fig, path)


def _front(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from .plots import pareto_front

    return pareto_front(pts, "ratio", "retention")


def write_html(pts: list[dict[str, Any]], splits: Sequence[str], path: Path, title: str) -> None:
    """One self-contained page: an SVG scatter (hover a point for its row) and the table."""
    width, height, left, bottom, top, right = 900, 520, 60, 50, 20, 20
    xs, ys = [math.log(p["ratio"]) for p in pts], [p["retention"] for p in pts]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys + [100]) - 2, max(ys + [100]) + 2

    def sx(v: float) -> float:
        return left + (math.log(v) - x0) / (x1 - x0) * (width - left - right)

    def sy(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * (height - top - bottom)

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    methods = sorted({p["method"] for p in pts})
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for t in (1, 2, 4, 8, 16, 32, 64):
        if x0 <= math.log(t) <= x1:
            svg.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{height - bottom}" stroke="#ddd"/>'
                       f'<text x="{sx(t):.1f}" y="{height - bottom + 15}" text-anchor="middle">{t}x</text>')
    for v in range(int(y0) // 5 * 5, int(y1) + 1, 5):
        if y0 <= v <= y1:
            svg.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>'
                       f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v}%</text>')
    svg.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(100):.1f}" y2="{sy(100):.1f}" stroke="#888" '
               'stroke-dasharray="4 3"/>')
    front = _front(pts)
    svg.append('<polyline fill="none" stroke="#555" points="'
               + " ".join(f"{sx(p['ratio']):.1f},{sy(p['retention']):.1f}" for p in front) + '"/>')
    for p in pts:
        figures = ", ".join(f"{s}: {v:.1f}%" for s, v in p["per_split"].items())
        tip = html.escape(f"#{p['number']} {p['name']} — {p['ratio']:.2f}x — {figures}")
        svg.append(f'<g><title>{tip}</title><circle cx="{sx(p["ratio"]):.1f}" cy="{sy(p["retention"]):.1f}" r="6" '
                   f'fill="{color[p["method"]]}"/><text x="{sx(p["ratio"]) + 7:.1f}" y="{sy(p["retention"]) - 6:.1f}">'
                   f'{p["number"]}</text></g>')
        if p["study"] is not None:
            study_tip = html.escape(f"the study (WMT): {p['name']} {p['study']:.1f}%")
            svg.append(f'<g><title>{study_tip}</title>'
                       f'<circle cx="{sx(p["ratio"]):.1f}" cy="{sy(p["study"]):.1f}" r="7" fill="none" '
                       'stroke="#444"/></g>')
    svg.append(f'<text x="{(width + left) / 2}" y="{height - 12}" text-anchor="middle">compression ratio, whole '
               'model (log scale)</text>')
    svg.append("</svg>")
    legend = " ".join(f'<span style="color:{color[m]}">●</span> {html.escape(m)}' for m in methods)
    head = "".join(f"<th>% {html.escape(s)}</th>" for s in splits)
    body = "".join(f"<tr><td>{p['number']}</td><td>{html.escape(p['name'])}</td><td>{p['ratio']:.2f}x</td>"
                   + "".join(f"<td>{_pct(p['per_split'].get(s))}</td>" for s in splits)
                   + f"<td>{_pct(p['study'])}</td></tr>" for p in pts)
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
            "td:nth-child(2){text-align:left}</style>"
            f"<h1>{html.escape(title)}</h1><p>Hover a point for its row. {legend}; hollow circles: the study's "
            "WMT retention at our row's ratio.</p>" + "".join(svg)
            + f"<table><tr><th>#</th><th>row</th><th>ratio</th>{head}<th>study %</th></tr>{body}</table>")
    write_text_atomic(path, page + "\n")
