"""The compression pipeline for a Hugging Face model: retrain with the compression in the loop,
pack (the plain file and the Huffman-coded one beside it), measure, score — the same steps and the
same ``CompressionResult`` as ``train/pipeline.py``, with the model's own tokenizer, loss and
``generate()``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

from ..config import RunConfig
from ..data.splits import read_split
from ..pack.format import round_dense_to_half
from ..pack.sizes import ModelSizes
from ..train.pipeline import CompressionResult, SplitResult, score_translations
from ..train.retrain import RetrainConfig, Stage
from .model import HFModel, tokenizer_files, write_packed
from .retrain import retrain
from .translate import HFTranslator

VALID_SENTENCES = 100  # greedy validation BLEU after each step: a progress signal, not a result


def score_pretrained(hf: HFModel, splits: Sequence[str], limit: int | None = None,
                     beam_size: int = 5) -> dict[str, SplitResult]:
    return score_translations(HFTranslator(hf.model, hf.tokenizer, beam_size).translate, RunConfig(data=hf.data),
                              splits, limit)


def compress_pretrained(hf: HFModel, stages: list[Stage], rc: RetrainConfig, output: Path,
                        train_limit: int | None = None, work_dir: Path | None = None,
                        test_splits: Sequence[str] | None = None, test_limit: int | None = None,
                        half_dense: bool = False) -> CompressionResult:
    """Compress and retrain ``hf.model`` in place on ``hf.data``'s training pairs, write ``output``
    and ``OUTPUT.huffman.sfz``, score on ``test_splits`` (default: the data's test split)."""
    started = time.perf_counter()
    run = RunConfig(data=hf.data)
    train = read_split(run, hf.data.train_split, train_limit)
    valid = read_split(run, hf.data.valid_split, min(hf.data.valid_limit or VALID_SENTENCES, VALID_SENTENCES))
    outcome = retrain(hf, stages, rc, train, valid, work_dir)
    if half_dense:
        round_dense_to_half(hf.model)
    extra = {"history": outcome.history}
    packed = write_packed(hf, output, extra, half_dense=half_dense)
    huffman = write_packed(hf, output.with_name(f"{output.stem}.huffman{output.suffix}"), extra, huffman=True,
                           half_dense=half_dense)
    sizes = ModelSizes.measure(hf.model, tokenizer_files(hf.tokenizer), packed, huffman)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)  # the packed file now holds everything
    splits = [hf.data.test_split] if test_splits is None else list(test_splits)
    tests = score_pretrained(hf, splits, test_limit)
    return CompressionResult(outcome, sizes, packed.path, huffman.path, tests, time.perf_counter() - started)
