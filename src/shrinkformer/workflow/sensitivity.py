"""How much each layer's loss would suffer under each compression choice, estimated from data.

Two estimates:
- ``fisher`` (the default): the second-order term of the loss around the trained weights, with
  the Hessian's diagonal replaced by the empirical Fisher (mean squared per-batch gradient, as in
  Optimal Brain Damage / HAWQ's trace proxies): ``0.5 * sum_i F_i (w_i - q_i)^2``. One pass of
  gradients over a few hundred sentences, then pure tensor arithmetic per (layer, choice).
- ``loss``: the measured increase of the held-out loss with only that layer compressed. Exact for
  one layer at a time but one forward pass per (layer, choice); ``benchmarks/sensitivity.py``
  measures how well the Fisher estimate ranks choices against it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .allocate import Choice, choice_bytes, survivors_and_mask_bytes
from ..compress.base import row_scales
from ..compress.primitives import kmeans_1d, magnitude_mask

log = logging.getLogger(__name__)


class LossBatch(Protocol):
    """A batch that knows the model's mean token loss on it (``adapters.base.PairBatch``: each
    family computes it its own way); the estimates below need nothing else."""

    tokens: int

    def loss(self, model: nn.Module) -> Tensor: ...


def nll(model: nn.Module, batches: Sequence[LossBatch]) -> float:
    """Mean per-token negative log-likelihood."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += float(b.loss(model)) * b.tokens
            tokens += b.tokens
    return total / max(tokens, 1)


def fisher_diagonal(model: nn.Module, weights: dict[str, Tensor], batches: Sequence[LossBatch]) -> dict[str, Tensor]:
    """Mean over batches of the squared gradient of the mean token loss, for each named weight."""
    was_training = model.training
    model.eval()  # no dropout: the curvature of the model as it will be used
    acc = {name: torch.zeros_like(w) for name, w in weights.items()}
    for b in tqdm(batches, desc="sensitivity (gradients)", unit="batch", disable=None, leave=False):
        model.zero_grad(set_to_none=True)
        b.loss(model).backward()
        for name, w in weights.items():
            if w.grad is not None:
                acc[name] += w.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: a / max(len(batches), 1) for name, a in acc.items()}


Masks = dict[str, dict[float, Tensor]]


def price(weights: dict[str, Tensor], choices: Iterable[Choice], half_dense: bool
          ) -> tuple[dict[str, dict[Choice, int]], Masks]:
    """Every (layer, choice)'s packed bytes, and the pruning masks they were worked out from (one
    magnitude sort per layer and sparsity, reused by the scoring)."""
    choices = list(choices)
    costs: dict[str, dict[Choice, int]] = {}
    masks: Masks = {}
    for name, w in weights.items():
        w = w.detach()
        masks[name] = {s: magnitude_mask(w, s) for s in sorted({c.sparsity for c in choices}) if s}
        mask_costs = {s: survivors_and_mask_bytes(m) for s, m in masks[name].items()}
        costs[name] = {c: choice_bytes(name, w, c, half_dense, masks[name].get(c.sparsity),
                                       mask_costs.get(c.sparsity)) for c in choices}
    return costs, masks


def score_choices(weights: dict[str, Tensor], choices: Iterable[Choice], masks: Masks,
                  score: Callable[[str, Tensor, Tensor], float]) -> dict[str, dict[Choice, float]]:
    """``score(name, weight, compressed weight)`` of every (layer, choice); 0 for leaving it dense."""
    choices = list(choices)
    sens: dict[str, dict[Choice, float]] = {}
    bar = tqdm(total=len(weights) * len(choices), desc="sensitivity (choices)", unit="choice", disable=None,
               leave=False)
    for name, w in weights.items():
        w = w.detach()
        sens[name] = {}
        for choice in choices:
            codec = choice.codec(w, masks[name].get(choice.sparsity))
            if codec is None:
                sens[name][choice] = 0.0
            else:
                codec.eval()
                with torch.no_grad():
                    sens[name][choice] = score(name, w, codec())
            bar.update()
    bar.close()
    return sens


def fisher_scores(model: nn.Module, weights: dict[str, Tensor], batches: Sequence[LossBatch], choices: Iterable[Choice],
                  masks: Masks) -> dict[str, dict[Choice, float]]:
    """``0.5 * sum F (w - q)^2`` for every (layer, choice). Worked on the surviving values only:
    the pruned ones contribute ``F w^2`` whatever the bits, and no dense ``q`` is ever built (it
    equals ``score_choices`` with the same formula, a test holds them together, ~3x faster)."""
    fisher = fisher_diagonal(model, weights, batches)
    choices = list(choices)
    sens: dict[str, dict[Choice, float]] = {}
    scaled = any(c.row_scale for c in choices)
    for name, w in tqdm(weights.items(), desc="sensitivity (choices)", unit="layer", disable=None, leave=False):
        rows = w.shape[0]
        w, f = w.detach().flatten(), fisher[name].flatten()
        kept = {0.0: (w, f, 0.0)}
        # each kept value's row scale (RowScaledCodec's), for the row-scaled choices
        scale = {0.0: row_scales(w.view(rows, -1), None).repeat_interleave(w.numel() // rows)} if scaled else {}
        for sparsity, mask in masks[name].items():
            m = mask.flatten()
            kept[sparsity] = (w[m], f[m], float((f[~m] * w[~m] ** 2).sum()))
            if scaled:
                scale[sparsity] = row_scales(w.view(rows, -1), mask.view(rows, -1)).repeat_interleave(
                    w.numel() // rows)[m]
        sens[name] = {}
        for c in choices:
            values, weight, pruned = kept[c.sparsity]
            err = pruned
            if c.bits is not None:
                s = scale[c.sparsity] if c.row_scale else None
                centroids, index = kmeans_1d(values if s is None else values / s, 2 ** c.bits)
                q = centroids[index.long()]
                err += float((weight * (values - (q if s is None else q * s)) ** 2).sum())
            sens[name][c] = 0.0 if c.dense else 0.5 * err
    return sens


def loss_scores(model: nn.Module, weights: dict[str, Tensor], batches: Sequence[LossBatch], choices: Iterable[Choice],
                masks: Masks) -> dict[str, dict[Choice, float]]:
    was_training = model.training
    model.eval()
    base = nll(model, batches)

    def measured(name: str, w: Tensor, q: Tensor) -> float:
        saved = weights[name].data.clone()
        weights[name].data.copy_(q)
        try:
            return nll(model, batches) - base
        finally:
            weights[name].data.copy_(saved)

    try:
        return score_choices(weights, choices, masks, measured)
    finally:
        model.train(was_training)


METHODS = {"fisher": fisher_scores, "loss": loss_scores}
