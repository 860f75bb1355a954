"""Batched beam search over a Transformer, with cached decoder keys/values.

Each step feeds only the newest token: self-attention keys/values of the prefix are kept per layer
(``LayerCache``) and cross-attention keys/values are projected from the encoder output once, one
row per sentence that all its beams attend to.
Sentences whose beams are all finished leave the batch, so long stragglers do not keep the whole
batch busy. ``use_cache=False`` recomputes the full prefix every step; it exists only as the
reference the decoding benchmark compares against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..runtime.search import SearchConfig
from .transformer import BOS, EOS, PAD, LayerCache, Transformer

__all__ = ["SearchConfig", "beam_search"]


def max_lengths(cfg: SearchConfig, src_mask: Tensor, max_positions: int) -> Tensor:
    """Per sentence (B,), the most target tokens it may have (``SearchConfig.max_lengths``)."""
    lengths = (~src_mask).sum(1).cpu().numpy()
    return torch.from_numpy(cfg.max_lengths(lengths, max_positions)).to(src_mask.device)


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, cfg: SearchConfig = SearchConfig(),
                use_cache: bool = True, native: bool = True) -> list[list[int]]:
    """Translate a padded batch of source ids (B, S); returns the best hypothesis per sentence
    as token ids without BOS/EOS. ``native``: the same search with each step's decoder and
    selection native where the model allows it: the runtime's engine and search (``runtime/``)."""
    if model.training:  # the root's flag: walking every module per call was a millisecond per sentence
        model.eval()
    n_sent, k = src.shape[0], cfg.beam_size
    engine = _native_engine(model, src) if native and use_cache else None
    if engine is not None:
        from ..inference.engine import beam_search as runtime_beam_search  # the runtime side

        return runtime_beam_search(engine, src, cfg, model.cfg.max_positions)
    memory, src_mask = model.encode(src)
    max_len = max_lengths(cfg, src_mask, model.cfg.max_positions)  # (B,)

    # Flattened beams: row b * k + j is beam j of sentence alive[b]; memory row b is its source.
    alive = torch.arange(n_sent, device=src.device)
    tokens = torch.full((n_sent * k, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.full((n_sent, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step fans out
    cache: list[LayerCache] | None = [{} for _ in model.decoder.layers] if use_cache else None
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_sent)]
    # Per step, as few tensor operations as the search allows: at batch 1 each one costs about as
    # much as its arithmetic, so what only changes when sentences leave is kept between steps.
    alive_ids, ranks = alive.tolist(), torch.arange(2 * k, device=src.device)
    offsets = torch.arange(n_sent, device=src.device)[:, None] * k
    shortest = int(max_len.min())  # no sentence is at its length limit before this step

    for step in range(int(max_len.max())):
        if use_cache:
            logits = model.decode(tokens[:, -1:], memory, src_mask, cache, start=step)[:, -1]
        else:
            logits = model.decode(tokens, memory, src_mask)[:, -1]
        logp = logits.float().log_softmax(-1)  # (n*k, V)
        del logits  # (n*k, V) buffers are the largest a step holds: one alive at a time keeps peak memory down
        logp[:, PAD] = logp[:, BOS] = float("-inf")
        if step + 1 >= shortest:  # out of length: EOS is the only choice
            at_limit = (max_len[alive] <= step + 1).repeat_interleave(k)
            eos_col = logp[at_limit, EOS].clone()
            logp[at_limit] = float("-inf")
            logp[at_limit, EOS] = eos_col
        top_scores, top_beam, top_tok = _best(logp.add_(scores.view(-1, 1)).view(len(alive), k, -1), 2 * k)
        del logp  # 2k candidates: at least k of them are not EOS

        # EOS among the best k candidates ends a hypothesis.
        is_eos = top_tok.eq(EOS) & torch.isfinite(top_scores)
        for b, r in is_eos[:, :k].nonzero().tolist():
            sent = alive_ids[b]
            if len(finished[sent]) < k:
                row = b * k + int(top_beam[b, r])
                hyp = tokens[row, 1:].tolist()
                finished[sent].append((cfg.final_score(float(top_scores[b, r]), hyp), hyp))

        # The best k non-EOS candidates continue.
        order = (is_eos.long() * 2 * k + ranks).argsort(dim=1)[:, :k]
        scores = top_scores.gather(1, order)
        rows = (top_beam.gather(1, order) + offsets).view(-1)
        tokens = torch.cat([tokens[rows], top_tok.gather(1, order).view(-1, 1)], dim=1)

        done_ids = [len(finished[s]) >= k for s in alive_ids]
        if all(done_ids):
            break
        if any(done_ids):  # finished sentences leave the batch
            keep = torch.tensor([b for b, d in enumerate(done_ids) if not d], device=src.device)
            keep_rows = (keep[:, None] * k + ranks[:k]).view(-1)
        if cache is not None:
            for layer in cache:
                # Cross-attention keys are per sentence; only self-attention follows the beams.
                layer["self_k"], layer["self_v"] = layer["self_k"][rows], layer["self_v"][rows]
                if any(done_ids):
                    for name in layer:
                        layer[name] = layer[name][keep_rows if name.startswith("self") else keep]
        if any(done_ids):
            alive, scores, tokens = alive[keep], scores[keep], tokens[keep_rows]
            alive_ids, offsets = alive.tolist(), offsets[: len(alive)]
            shortest = int(max_len[alive].min())
            memory, src_mask = memory[keep], src_mask[keep]

    return [max(hyps)[1] if hyps else [] for hyps in finished]


def _native_engine(model: Transformer, src: Tensor):  # -> runtime Engine | None
    from ..inference.engine import native_engine  # the runtime side; the model does not need it

    return native_engine(model) if src.is_cpu else None


def _best(cand: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The n best of cand (B, k, V) per sentence over all k*V: scores, beams, tokens, each (B, n).
    Each beam's own n best first, then the best of those k*n: the same candidates as one top-n
    over k*V, for a fraction of the work (one top-n over 40,000 values was a tenth of a step)."""
    per_beam_scores, per_beam_tok = cand.topk(min(n, cand.shape[-1]), dim=-1)  # (B, k, n)
    scores, idx = per_beam_scores.flatten(1).topk(n, dim=1)
    beam = idx // per_beam_scores.shape[-1]
    return scores, beam, per_beam_tok.flatten(1).gather(1, idx)
