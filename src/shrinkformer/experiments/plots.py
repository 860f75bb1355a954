"""Plots a person reads at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"kmeans": "o", "bsflex": "D", "binary-fixed": "s", "prune": "^", "prune+kmeans": "*"}


def bleu_vs_compression(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ok = [r for r in rows if r.get("status") == "ok" and r.get("bleu_retention") is not None and r["method"] != "none"]
    for method, marker in MARKERS.items():
        pts = [r for r in ok if r["method"] == method]
        if pts:
            ax.scatter([r["compression_ratio"] for r in pts], [100 * r["bleu_retention"] for r in pts],
                       marker=marker, s=70, label=method, zorder=3)
    for r in ok:
        ax.annotate(r["name"], (r["compression_ratio"], 100 * r["bleu_retention"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7.5)
    ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="baseline")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (fp32 file / packed file, log scale)")
    ax.set_ylabel("% of baseline BLEU")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
