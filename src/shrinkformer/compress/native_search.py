"""Beam search with both halves of every step native: the decoder (``decoder_step.py``) and the
selection (``csrc/beam_select.c``: log-softmax, each beam's best candidates, the sentence's best,
finished hypotheses). It is ``model/search.py``'s search, step for step; what is left in Python
is a few integer bookkeeping operations per step and one short walk back per finished hypothesis.

At batch 1 a step's arithmetic is about a millisecond, and the dozen PyTorch operators of the
selection plus the token bookkeeping (a gather and a concatenation of the growing prefixes each
step) cost a third of that again. Here prefixes are never copied: each step records the row each
continuing beam extends and its token, and a finished hypothesis is read back through them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native
from ..special_tokens import BOS, EOS, PAD


def beam_search(decoder, model, src: Tensor, cfg) -> list[list[int]]:  # decoder: NativeDecoder, cfg: SearchConfig
    """``model/search.py``'s ``beam_search`` with the native decoder ``decoder`` of ``model``."""
    n_sent, k = src.shape[0], cfg.beam_size
    encoded = decoder.encode(model, src, k)
    memory, src_mask = encoded if encoded is not None else model.encode(src)
    max_len = cfg.max_lengths(src_mask, model.cfg.max_positions).tolist()
    session = decoder.start(model, memory, src_mask, k, max(max_len) + 1)
    lib, vocab = native.library(), model.cfg.vocab_size

    alive = list(range(n_sent))  # sentence of each group of k rows
    sentences = torch.arange(n_sent)  # the same, as the decoder step takes it (memory rows)
    # beam_select writes each step's continuing rows, tokens and scores in place; the next step
    # reads them from there (until sentences leave, when the survivors are gathered)
    parent_out, token_out = torch.empty(n_sent * k, dtype=torch.int64), torch.full((n_sent * k,), BOS, dtype=torch.int64)
    fin_beam, fin_score = torch.empty(n_sent * k, dtype=torch.int64), torch.empty(n_sent * k)
    scores = torch.full((n_sent * k,), float("-inf"))
    scores[::k] = 0.0  # all beams start identical: keep one so the first step fans out
    last, parent = token_out, None  # parent: per row, the row of the previous step it continues
    at_limit = torch.zeros(n_sent, dtype=torch.uint8)
    # per step s: for each row entering step s + 1, the row of step s it extends and its token
    history: list[tuple[list[int], list[int]]] = []
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_sent)]
    shortest = min(max_len)  # no sentence is at its length limit before this step
    pointers = [a.data_ptr() for a in (parent_out, token_out, fin_beam, fin_score)]

    for step in range(max(max_len)):
        n = len(alive)
        logits = session.step(last, step, parent, sentences)
        limited = step + 1 >= shortest
        if limited:
            at_limit[:n] = torch.tensor([max_len[s] <= step + 1 for s in alive], dtype=torch.uint8)
        done = lib.beam_select(logits.data_ptr(), n, k, vocab, scores.data_ptr(),
                               at_limit.data_ptr() if limited else None, PAD, BOS, EOS, *pointers)
        rows, toks = parent_out[: n * k].tolist(), token_out[: n * k].tolist()
        last, parent = token_out[: n * k], parent_out[: n * k]  # read by the next step where they are
        if done:
            beams, fin_scores = fin_beam[: n * k].tolist(), fin_score[: n * k].tolist()
            for b in range(n):
                sent = alive[b]
                for r in range(b * k, b * k + k):
                    if beams[r] >= 0 and len(finished[sent]) < k:
                        hyp = _prefix(history, step, b * k + beams[r])
                        finished[sent].append((cfg.final_score(fin_scores[r], hyp), hyp))
            keep = [b for b in range(n) if len(finished[alive[b]]) < k]
            if not keep:
                break
            if len(keep) < n:  # finished sentences leave the batch
                keep_rows = [b * k + j for b in keep for j in range(k)]
                rows, toks = [rows[r] for r in keep_rows], [toks[r] for r in keep_rows]
                scores = scores[keep_rows].contiguous()
                alive = [alive[b] for b in keep]
                sentences = torch.tensor(alive, dtype=torch.int64)
                shortest = min(max_len[s] for s in alive)
                last, parent = torch.tensor(toks, dtype=torch.int64), torch.tensor(rows, dtype=torch.int64)
        history.append((rows, toks))

    return [max(hyps)[1] if hyps else [] for hyps in finished]


def _prefix(history: list[tuple[list[int], list[int]]], step: int, row: int) -> list[int]:
    """The tokens (after BOS) of the row that entered step ``step``, read back through the record."""
    out = []
    for s in range(step - 1, -1, -1):
        rows, toks = history[s]
        out.append(toks[row])
        row = rows[row]
    return out[::-1]


__all__ = ["beam_search"]
