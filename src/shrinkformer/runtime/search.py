"""Beam search over an engine (the native one, ``engine.py``, or numpy's, ``reference.py``): the
one search every translation runs, from the torch side too. Each step is the engine's decoding
step, then the selection (``csrc/beam_select.c``, or its numpy twin): log-softmax, PAD and BOS
ruled out, EOS forced at the length limit, each beam's best 2k candidates, the sentence's best 2k;
among its best k a finite EOS finishes a hypothesis, the best k others continue. Prefixes are never
copied: each step records the row each continuing beam extends and its token, and a finished
hypothesis is read back through them. Sentences whose k hypotheses are finished leave the batch.

``model/search.py`` keeps the same search in PyTorch operators, as the reference it is tested
against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..special_tokens import BOS, EOS, PAD


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # final score = sum log p / length ** length_penalty
    max_len_a: float = 1.2  # at most a * source_length + b target tokens
    max_len_b: int = 10

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise UsageError(f"beam size must be >= 1, got {self.beam_size}")

    def max_lengths(self, source_lengths: np.ndarray, max_positions: int) -> np.ndarray:
        """Per sentence, the most target tokens it may have: a * its source length + b (in float32,
        as the PyTorch search computes it), within the positional table."""
        limit = np.asarray(source_lengths).astype(np.float32) * np.float32(self.max_len_a) + np.float32(self.max_len_b)
        return np.clip(limit.astype(np.int64), 1, max_positions - 1)

    def final_score(self, score: float, hyp: list[int]) -> float:
        """A finished hypothesis's score: its log-probability (EOS included) over its length with EOS."""
        return score / (len(hyp) + 1) ** self.length_penalty


class Selection:
    """The selection's output buffers, and the call that fills them (native or numpy)."""

    def __init__(self, rows: int, native_select) -> None:
        self.parent = np.empty(rows, dtype=np.int64)
        self.token = np.full(rows, BOS, dtype=np.int64)
        self.finished_beam = np.empty(rows, dtype=np.int64)
        self.finished_score = np.empty(rows, dtype=np.float32)
        self._native = native_select

    def __call__(self, logits: np.ndarray, n: int, k: int, scores: np.ndarray, at_limit: np.ndarray | None) -> int:
        if self._native is not None:
            return self._native(logits.ctypes.data, n, k, logits.shape[1], scores.ctypes.data,
                                None if at_limit is None else at_limit.ctypes.data, PAD, BOS, EOS,
                                self.parent.ctypes.data, self.token.ctypes.data, self.finished_beam.ctypes.data,
                                self.finished_score.ctypes.data)
        return select_numpy(logits, n, k, scores, at_limit, self)


def beam_search(engine, src: np.ndarray, cfg: SearchConfig, max_positions: int) -> list[list[int]]:
    """Best hypothesis per sentence of a padded batch of source ids (n, S), without BOS/EOS: the
    engine's own search where it has one (the native engine's is ``csrc/search.c``, this loop in
    C), else ``search_loop``."""
    if hasattr(engine, "search"):
        return engine.search(src, cfg, max_positions)
    return search_loop(engine, src, cfg, max_positions)


def search_loop(engine, src: np.ndarray, cfg: SearchConfig, max_positions: int) -> list[list[int]]:
    """The search over an engine's encoder, steps and selection: the numpy engine's, and the
    reference ``csrc/search.c`` is tested against."""
    src = np.ascontiguousarray(src, dtype=np.int64)
    n_sent, k = src.shape[0], cfg.beam_size
    memory = engine.encode(src)
    key_padding = src == PAD
    max_len = cfg.max_lengths((~key_padding).sum(1), max_positions).tolist()
    session = engine.start(memory, key_padding, k, max(max_len) + 1)
    select = Selection(n_sent * k, engine.select)

    alive = list(range(n_sent))  # sentence of each group of k rows
    sentences = np.arange(n_sent, dtype=np.int64)  # the same, as the decoder step takes it (memory rows)
    scores = np.full(n_sent * k, -np.inf, dtype=np.float32)
    scores[::k] = 0.0  # all beams start identical: keep one so the first step fans out
    last, parent = select.token, None  # parent: per row, the row of the previous step it continues
    at_limit = np.zeros(n_sent, dtype=np.uint8)
    history: list[tuple[list[int], list[int]]] = []  # per step: each continuing row's parent row and token
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_sent)]
    shortest = min(max_len)  # no sentence is at its length limit before this step

    for step in range(max(max_len)):
        n = len(alive)
        logits = session.step(last, step, parent, sentences)
        limited = step + 1 >= shortest
        if limited:
            at_limit[:n] = [max_len[s] <= step + 1 for s in alive]
        done = select(logits, n, k, scores, at_limit if limited else None)
        rows, toks = select.parent[: n * k].tolist(), select.token[: n * k].tolist()
        last, parent = select.token[: n * k], select.parent[: n * k]  # read by the next step where they are
        if done:
            beams, fin_scores = select.finished_beam[: n * k].tolist(), select.finished_score[: n * k].tolist()
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
                scores = np.ascontiguousarray(scores[keep_rows])
                alive = [alive[b] for b in keep]
                sentences = np.array(alive, dtype=np.int64)
                shortest = min(max_len[s] for s in alive)
                last, parent = np.array(toks, dtype=np.int64), np.array(rows, dtype=np.int64)
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


def select_numpy(logits: np.ndarray, n: int, k: int, scores: np.ndarray, at_limit: np.ndarray | None,
                 out: Selection) -> int:
    """``beam_select`` in numpy (the runtime without its native library): the same candidates and
    order; scores agree to rounding (numpy's exp, not the library's polynomial)."""
    V = logits.shape[1]
    c = min(2 * k, V)
    x = logits[: n * k]
    m = x.max(axis=1, keepdims=True)
    logp = (x - m) - np.log(np.exp(x - m).sum(axis=1, keepdims=True, dtype=np.float32))
    logp = (logp + scores[: n * k, None]).astype(np.float32)
    logp[:, [PAD, BOS]] = -np.inf
    if at_limit is not None:
        limited = np.repeat(at_limit[:n].astype(bool), k)
        eos = logp[limited, EOS].copy()
        logp[limited] = -np.inf
        logp[limited, EOS] = eos
    best_tok = np.argsort(-logp, axis=1, kind="stable")[:, :c]  # ties: the lower token first
    best = np.take_along_axis(logp, best_tok, axis=1)
    pool_score, pool_tok = best.reshape(n, k * c), best_tok.reshape(n, k * c)
    top = np.argsort(-pool_score, axis=1, kind="stable")[:, : 2 * k]  # ties: the lower beam first
    finished = 0
    for b in range(n):
        ranked = [(int(p), float(pool_score[b, p]), int(pool_tok[b, p])) for p in top[b]]
        is_eos = [tok == EOS and np.isfinite(s) for _, s, tok in ranked]
        for r in range(k):
            p, s, _ = ranked[r]
            out.finished_beam[b * k + r] = p // c if is_eos[r] else -1
            out.finished_score[b * k + r] = s
            finished += is_eos[r]
        going = [r for r in range(len(ranked)) if not is_eos[r]] + [r for r in range(len(ranked)) if is_eos[r]]
        for j, r in enumerate(going[:k]):
            p, s, tok = ranked[r]
            out.parent[b * k + j], out.token[b * k + j], scores[b * k + j] = b * k + p // c, tok, s
    return finished
