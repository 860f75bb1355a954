"""Plots a person reads at a glance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from ..io import atomic_write  # noqa: E402

MARKERS = {"kmeans": "o", "bsflex": "D", "binary-fixed": "s", "prune": "^", "prune+kmeans": "*", "bsflex+kmeans": "P",
           "mixed": "X"}


TICKS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def bleu_vs_compression(rows: list[dict[str, Any]], path: Path, title: str,
                        comparisons: list[dict[str, Any]] | None = None) -> None:
    """% of baseline BLEU against the compression ratio, whole model (left) and compressed layers
    only (right), one marker per method and a label per row placed clear of the others; error bars
    are the 95% bootstrap intervals of each row's BLEU, the dotted line the control."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("bleu_retention") is not None and r["method"] != "none"]
    base = next((r for r in rows if r["name"] == "baseline" and r.get("status") == "ok"), None)
    control = next((r for r in rows if r["name"] == "control" and r.get("status") == "ok"), None)
    half = {c["b"]: c["ci_b"] for c in comparisons or [] if c["a"] == "baseline"
            and base is not None and c["split"] == base.get("test_split")}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, key, what in ((axes[0], "model_compression_ratio", "whole model"),
                          (axes[1], "scope_compression_ratio", "compressed layers only")):
        pts = [r for r in ok if r.get(key)]
        if key == "model_compression_ratio":
            front = pareto_front(pts, key)
            ax.plot([r[key] for r in front], [100 * r["bleu_retention"] for r in front], color="0.35",
                    linewidth=1, zorder=1, label="Pareto front")
        for method, marker in MARKERS.items():
            mine = [r for r in pts if r["method"] == method]
            if mine:
                points = ax.scatter([r[key] for r in mine], [100 * r["bleu_retention"] for r in mine],
                                    marker=marker, s=70, label=method, zorder=3)
                if base and any(r["name"] in half for r in mine):
                    ax.errorbar([r[key] for r in mine], [100 * r["bleu_retention"] for r in mine],
                                yerr=[100 * half.get(r["name"], 0) / base["bleu"] for r in mine], fmt="none",
                                ecolor=points.get_facecolor()[0], elinewidth=1, capsize=3, zorder=2)
        ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="baseline")
        if control and control.get("bleu_retention") is not None:
            ax.axhline(100 * control["bleu_retention"], color="grey", linestyle=":", linewidth=1.2,
                       label="control (retrained, uncompressed)")
        ratio_axis(ax, [r[key] for r in pts], right=1.6)  # room on the right for the labels
        ax.set_xlabel(f"compression ratio, {what} (fp32 / packed parameters, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        fig.canvas.draw()  # label placement needs the axes' final pixel geometry
        _label_points(ax, [(r["name"], r[key], 100 * r["bleu_retention"]) for r in pts])
    axes[0].set_ylabel("% of baseline BLEU")
    axes[0].legend(loc="best", fontsize=8, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def pareto_front(rows: list[dict[str, Any]], key: str, value: str = "bleu_retention") -> list[dict[str, Any]]:
    """The rows no other row beats on both ``key`` (ratio) and ``value`` (retention), by increasing ratio."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (-r[key], -r[value])):
        if r[value] > best:
            front.append(r)
            best = r[value]
    return front[::-1]


def ratio_axis(ax, xs: list[float], right: float = 1.15) -> None:
    """A log-scale x axis of compression ratios, ticks at round ratios written 4x, 8x, ..."""
    xs = xs or [1.0]
    lo, hi = min(xs) / 1.15, max(xs) * right
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in TICKS if lo <= t <= hi])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, path: Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=130)
    plt.close(fig)


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Name each point, top to bottom, moving a label down (then to the left) until it overlaps no
    label placed before it, so labels keep the points' order; points at one place share a label."""
    merged: dict[tuple[float, float], list[str]] = {}
    for name, x, y in points:
        merged.setdefault((round(x, 2), round(y, 1)), []).append(name)
    placed: list[tuple[float, float, float, float]] = []
    for (x, y), names in sorted(merged.items(), key=lambda item: -item[0][1]):
        text = " / ".join(names)
        px, py = ax.transData.transform((x, y)) * 72 / ax.figure.dpi  # points, as the offsets are
        width, height = 4.3 * len(text), 9.0
        for dx, dy in ((6, 3), (6, -11), (6, -21), (6, -31), (-6 - width, 3), (-6 - width, -11), (6, -41)):
            box = (px + dx, py + dy, px + dx + width, py + dy + height)
            # clear of, and below, every label beside it: those belong to higher points
            if not any(box[0] < b[2] and b[0] < box[2] and box[3] > b[1] for b in placed):
                break
        placed.append(box)
        moved = {} if (dx, dy) == (6, 3) else {"arrowprops": {"arrowstyle": "-", "color": "0.55", "lw": 0.6,
                                                              "shrinkA": 0, "shrinkB": 4}}
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7.5, **moved)


def attention_histograms(layers: dict[str, list], quantize: dict[str, object], k: int, path: Path) -> None:
    """Overlaid histograms of original and k-value attention probabilities, encoder and decoder."""
    import torch

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("encoder", "decoder")):
        names = [n for n in layers if n.startswith(kind)]
        orig = torch.cat([m.flatten() for n in names for m in layers[n]])
        quant = torch.cat([quantize[n](m).flatten() for n in names for m in layers[n]])
        keep = orig > 0  # masked (future) positions are not attention values
        bins = torch.linspace(0, 1, 51).numpy()
        ax.hist(orig[keep].numpy(), bins=bins, alpha=0.55, label="original", color="tab:blue")
        ax.hist(quant[keep].numpy(), bins=bins, alpha=0.55, label=f"{k} values (k-means)", color="tab:orange")
        ax.set_yscale("log")
        ax.set_title(f"{kind} self-attention ({len(names)} layers)")
        ax.set_xlabel("attention probability")
        ax.legend()
    axes[0].set_ylabel("count (log scale)")
    fig.tight_layout()
    _save(fig, path)


ROLE_COLUMNS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.out_proj",
                "ffn.fc1", "ffn.fc2")


def allocation_heatmap(layers: list[dict[str, Any]], path: Path, title: str) -> None:
    """A budgeted allocation at a glance: one row per encoder/decoder layer, one column per role,
    coloured by packed bits per weight and labelled with the choice; layers that fit no cell (the
    embedding) are listed under the grid."""
    import re

    import numpy as np

    grid_rows: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    others = []
    for layer in layers:
        m = re.search(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.(.+)$", layer["name"])  # HF: model.encoder...
        role = m and m.group(3).replace("encoder_attn", "cross_attn")
        if m and role in ROLE_COLUMNS:
            row = f"{m.group(1)} {m.group(2)}"
            if row not in grid_rows:
                grid_rows.append(row)
            cells[(row, role)] = layer
        else:
            others.append(layer)
    values = np.full((len(grid_rows), len(ROLE_COLUMNS)), np.nan)
    for (row, role), layer in cells.items():
        values[grid_rows.index(row), ROLE_COLUMNS.index(role)] = layer["bits_per_weight"]
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.55 * max(len(grid_rows), 1)))
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=0, vmax=max(4.0, float(np.nanmax(values))
                                                                             if cells else 4.0))
    for (row, role), layer in cells.items():
        i, j = grid_rows.index(row), ROLE_COLUMNS.index(role)
        ax.text(j, i, layer["choice"], ha="center", va="center", fontsize=8,
                color="white" if layer["bits_per_weight"] < 2.5 else "black")
    ax.set_xticks(range(len(ROLE_COLUMNS)), [c.replace("_proj", "").replace("_attn", "") for c in ROLE_COLUMNS],
                  rotation=30, ha="right")
    ax.set_yticks(range(len(grid_rows)), grid_rows)
    fig.colorbar(image, ax=ax, label="packed bits per weight")
    extra = "; ".join(f"{x['name']}: {x['choice']} ({x['bits_per_weight']:.2f} bits/weight)" for x in others)
    ax.set_title(title + (f"\n{extra}" if extra else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
