"""Helpers shared by the benchmarks: real Multi30k batches and interleaved timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from shrinkformer.data.batching import Batch, collate, token_batches
from shrinkformer.data.corpus import read_parallel
from shrinkformer.data.tokenizer import Tokenizer

DATA = Path(os.environ.get("SHRINKFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"))


def multi30k_batches(n: int, batch_tokens: int = 3072, vocab: int = 8000, sentences: int = 8000) -> tuple[Tokenizer, list[Batch]]:
    raw = read_parallel(DATA, "train", "en", "de", limit=sentences)
    tok = Tokenizer.train(raw.source + raw.target, vocab)
    src, tgt = tok.encode(raw.source), tok.encode(raw.target)
    idx = token_batches([max(len(s), len(t)) + 1 for s, t in zip(src, tgt)], batch_tokens, shuffle=True, seed=0)
    return tok, [collate([src[i] for i in b], [tgt[i] for i in b], b) for b in idx[:n]]


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each function once per round, alternating, so machine noise hits all of them alike.
    Each function returns the seconds it measured."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return times


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(name: str, result: dict, out: Path | None) -> None:
    result.update(machine=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                  threads=torch.get_num_threads())
    print(json.dumps(result, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


median = statistics.median


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_bytes() -> int:
    """This process's resident memory now."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not ``getrusage``'s ru_maxrss: Linux carries that
    over an exec from the forking parent, so a child of a parent holding a gigabyte reports a gigabyte
    however little it uses itself."""
    return _status_bytes("VmHWM")
