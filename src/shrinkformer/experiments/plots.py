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
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
