"""Batched beam search over a Transformer, with cached decoder keys/values.

Each step feeds only the newest token: self-attention keys/values of the prefix are kept per layer
(``LayerCache``) and cross-attention keys/values are projected from the encoder output once.
Sentences whose beams are all finished leave the batch, so long stragglers do not keep the whole
batch busy. ``use_cache=False`` recomputes the full prefix every step; it exists only as the
reference the decoding benchmark compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError
from .transformer import BOS, EOS, PAD, LayerCache, Transformer


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # final score = sum log p / length ** length_penalty
    max_len_a: float = 1.2  # at most a * source_length + b target tokens
    max_len_b: int = 10

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise UsageError(f"beam size must be >= 1, got {self.beam_size}")


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, cfg: SearchConfig = SearchConfig(),
                use_cache: bool = True) -> list[list[int]]:
    """Translate a padded batch of source ids (B, S); returns the best hypothesis per sentence
    as token ids without BOS/EOS."""
    model.eval()
    n_sent, k = src.shape[0], cfg.beam_size
    memory, src_mask = model.encode(src)
    src_len = (~src_mask).sum(1)
    limit = model.cfg.max_positions - 1
    max_len = (src_len.float() * cfg.max_len_a + cfg.max_len_b).long().clamp(1, limit)  # (B,)

    # Flattened beams: row b * k + j is beam j of sentence alive[b].
    alive = torch.arange(n_sent, device=src.device)
    memory, src_mask = memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0)
    tokens = torch.full((n_sent * k, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.full((n_sent, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step fans out
    cache: list[LayerCache] | None = [{} for _ in model.decoder.layers] if use_cache else None
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_sent)]

    for step in range(int(max_len.max())):
        if use_cache:
            logits = model.decode(tokens[:, -1:], memory, src_mask, cache, start=step)[:, -1]
        else:
            logits = model.decode(tokens, memory, src_mask)[:, -1]
        logp = logits.float().log_softmax(-1)  # (n*k, V)
        del logits  # (n*k, V) buffers are the largest a step holds: one alive at a time keeps peak memory down
        logp[:, PAD] = logp[:, BOS] = float("-inf")
        at_limit = (max_len[alive] <= step + 1).repeat_interleave(k)
        if at_limit.any():  # out of length: EOS is the only choice
            eos_col = logp[at_limit, EOS].clone()
            logp[at_limit] = float("-inf")
            logp[at_limit, EOS] = eos_col
        vocab = logp.shape[-1]
        cand = logp.add_(scores.view(-1, 1)).view(len(alive), k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)  # 2k: at least k of them are not EOS
        del logp, cand
        top_beam, top_tok = top_idx // vocab, top_idx % vocab

        # EOS among the best k candidates ends a hypothesis.
        is_eos = top_tok.eq(EOS) & torch.isfinite(top_scores)
        for b, r in is_eos[:, :k].nonzero().tolist():
            sent = int(alive[b])
            if len(finished[sent]) < k:
                row = b * k + int(top_beam[b, r])
                hyp = tokens[row, 1:].tolist()
                finished[sent].append((float(top_scores[b, r]) / (len(hyp) + 1) ** cfg.length_penalty, hyp))

        # The best k non-EOS candidates continue.
        order = (is_eos.long() * 2 * k + torch.arange(2 * k, device=src.device)).argsort(dim=1)[:, :k]
        scores = top_scores.gather(1, order)
        rows = (top_beam.gather(1, order) + torch.arange(len(alive), device=src.device)[:, None] * k).view(-1)
        tokens = torch.cat([tokens[rows], top_tok.gather(1, order).view(-1, 1)], dim=1)

        done = torch.tensor([len(finished[int(s)]) >= k for s in alive], device=src.device)
        if done.all():
            break
        keep = (~done).nonzero().squeeze(1)
        keep_rows = (keep[:, None] * k + torch.arange(k, device=src.device)).view(-1)
        if cache is not None:
            for layer in cache:
                # Beams of one sentence share their cross-attention keys; only self-attention
                # follows the beam reordering.
                layer["self_k"], layer["self_v"] = layer["self_k"][rows], layer["self_v"][rows]
                if not done.any():
                    continue
                for name in layer:
                    layer[name] = layer[name][keep_rows]
        if done.any():
            alive, scores, tokens = alive[keep], scores[keep], tokens[keep_rows]
            memory, src_mask = memory[keep_rows], src_mask[keep_rows]

    return [max(hyps)[1] if hyps else [] for hyps in finished]
