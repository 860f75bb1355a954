"""Sequence-level knowledge distillation's data (Kim & Rush 2016; how Bergamot's small students are
trained): the training sources translated by the uncompressed model with its beam search, so a
compressed model retrains on what the full model says instead of (or beside) the references.

The translations are cached under ``$SHRINKFORMER_CACHE/teacher/`` by the teacher's fingerprint,
its search settings and the sources themselves, in chunks: a sweep's rows share one set, and a
killed run keeps the chunks it finished.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..adapters.base import ModelAdapter
from ..data.corpus import Parallel
from ..data.datasets import cache_root
from ..errors import UsageError
from ..io import atomic_write
from ..train.distributed import World

log = logging.getLogger(__name__)

CHOICES = ("references", "teacher", "both")
CHUNK = 2048  # sentences per cached piece: a killed run loses at most this many translations


def check(data: str) -> None:
    if data not in CHOICES:
        raise UsageError(f"retraining data must be one of {', '.join(CHOICES)}, got {data!r}")


def cache_path(adapter: ModelAdapter, sources: Sequence[str]) -> Path:
    h = hashlib.sha256(adapter.fingerprint().encode())
    h.update(adapter.search_key().encode())
    h.update("\n".join(sources).encode("utf-8"))
    return cache_root() / "teacher" / h.hexdigest()[:20]


def translations(adapter: ModelAdapter, sources: Sequence[str], world: World = World()) -> list[str]:
    """``sources`` translated by ``adapter.model`` (its own search, its default beam), from the
    cache where they are there. Under torchrun the main process translates and the others read."""
    directory = cache_path(adapter, sources)
    chunks = [(i, directory / f"{i // CHUNK:05d}.txt.gz") for i in range(0, len(sources), CHUNK)]
    missing = [(i, path) for i, path in chunks if not path.exists()]
    if missing and world.is_main:
        log.info("teacher translations of %d training sources (%d to do; cached in %s)", len(sources),
                 sum(min(CHUNK, len(sources) - i) for i, _ in missing), directory)
        translator = adapter.translator(batch_sentences=64)
        for i, path in tqdm(missing, desc="teacher translations", unit="chunk", disable=None):
            lines = translator.translate(sources[i:i + CHUNK])
            with atomic_write(path) as f:
                f.write(gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0))
    world.barrier()
    out: list[str] = []
    for i, path in chunks:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[:-1]
        if len(lines) != min(CHUNK, len(sources) - i):
            raise UsageError(f"{path}: {len(lines)} teacher translations where {min(CHUNK, len(sources) - i)} "
                             "belong; remove it to translate again")
        out += lines
    return out


def retraining_pairs(data: str, references: Parallel, teacher: list[str] | None) -> Parallel:
    """What retraining learns from: the references, the teacher's translations, or both (each
    source twice, once with each target)."""
    if data == "references":
        return references
    if teacher is None or len(teacher) != len(references):
        raise ValueError(f"{len(teacher or [])} teacher translations for {len(references)} training pairs")
    keep = [i for i, t in enumerate(teacher) if t.strip()]  # an empty translation teaches nothing
    distilled = Parallel([references.source[i] for i in keep], [teacher[i] for i in keep])
    if data == "teacher":
        return distilled
    return Parallel(references.source + distilled.source, references.target + distilled.target)
