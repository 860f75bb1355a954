"""Compress a Hugging Face model and retrain it on parallel text with its own tokenizer.

The stages and their order are the ones ``train/retrain.py`` runs for our models (prune along the
schedule, then quantize, retraining after each step); the training step is the model's own loss
(``labels=``), Adam with the inverse-square-root schedule. A work directory keeps the model after
each finished step (as ours does): a killed run started again replays the finished steps'
compression, loads their weights and goes on; the step that was in progress starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..compress import count_params
from ..errors import UsageError
from ..data.corpus import Parallel
from ..evaluate.bleu import score
from ..train.loop import inverse_sqrt
from ..checkpoint import save_atomic
from ..train.retrain import (RetrainConfig, RetrainOutcome, Stage, Compressor, replay, plan, read_state,
                             work_directory)
from .model import HFModel
from .translate import HFTranslator

log = logging.getLogger(__name__)


def batches(pairs: Parallel, sentences: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices grouped by source length (little padding), in a seeded order per epoch."""
    order = sorted(range(len(pairs.source)), key=lambda i: (len(pairs.source[i]), i))
    groups = [order[i:i + sentences] for i in range(0, len(order), sentences)]
    random.Random(seed * 1_000_003 + epoch).shuffle(groups)
    return groups


def fit(hf: HFModel, pairs: Parallel, rc: RetrainConfig, batch_sentences: int = 32, seed: int = 1,
        max_length: int = 128) -> float:
    """Retrain for ``rc.epochs`` epochs; returns the wall time."""
    model, tok = hf.model, hf.tokenizer
    started = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=rc.lr, betas=(0.9, 0.98), eps=1e-9)
    step = 0
    model.train()
    for epoch in range(rc.epochs):
        bar = tqdm(batches(pairs, batch_sentences, seed, epoch), desc=f"retrain epoch {epoch + 1}", unit="batch",
                   disable=None, leave=False)
        for group in bar:
            torch.manual_seed(seed * 7919 + step)
            enc = tok([pairs.source[i] for i in group], text_target=[pairs.target[i] for i in group],
                      return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            enc["labels"] = enc["labels"].masked_fill(enc["labels"] == tok.pad_token_id, -100)
            for group_ in optimizer.param_groups:
                group_["lr"] = inverse_sqrt(step + 1, rc.lr, rc.warmup_steps)
            loss = model(**enc).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    return time.perf_counter() - started


def run_key(hf: HFModel, stages: list[Stage], rc: RetrainConfig, train: Parallel) -> str:
    """What a work directory belongs to: the model's weights, the stages, the settings, the data."""
    h = hashlib.sha256(json.dumps({"stages": [s.to_dict() for s in stages], "retrain": rc.key(),
                                   "pairs": len(train.source), "config": hf.model.config.to_dict()},
                                  sort_keys=True, default=str).encode())
    for name, value in sorted(hf.model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def retrain(hf: HFModel, stages: list[Stage], rc: RetrainConfig, train: Parallel,
            valid: Parallel | None = None, work_dir: Path | None = None) -> RetrainOutcome:
    """Compress ``hf.model`` in place step by step, retraining after each; resumes from ``work_dir``."""
    if rc.data != "references":
        raise UsageError("retraining on teacher translations (--retrain-data) is not supported for Hugging Face "
                         "models yet; it runs on shrinkformer's own Transformer")
    compressor = Compressor(hf.model, stages)  # type: ignore[arg-type]  # any nn.Module compresses
    total = count_params(hf.model)
    key = run_key(hf, stages, rc, train)
    steps = plan(stages)

    def valid_bleu() -> float | None:
        if valid is None:
            return None
        return score(HFTranslator(hf.model, hf.tokenizer, beam_size=1).translate(valid.source), valid.target).bleu

    with work_directory(work_dir) as work:
        state = read_state(work, key)
        if state is None:
            state = {"key": key, "done": 0, "retrain_seconds": 0.0,
                     "history": [{"stage": "uncompressed", "valid_bleu": valid_bleu()}]}
        else:
            log.info("resuming the retraining in %s: %d of %d steps done", work, state["done"], len(steps))
            replay(hf.model, compressor, steps, state, work)  # type: ignore[arg-type]
        for j in range(state["done"], len(steps)):
            step, name = steps[j], steps[j].name(stages)
            compressor.apply(step)
            state["history"].append({"stage": name, "when": "compressed", "valid_bleu": valid_bleu()})
            if rc.epochs and stages[step.stage].retrain:
                state["retrain_seconds"] += fit(hf, train, rc)
                state["history"].append({"stage": name, "when": "retrained", "valid_bleu": valid_bleu()})
            log.info("%s: validation BLEU %s", name, state["history"][-1]["valid_bleu"])
            snapshot = {k: v.detach().cpu().clone() for k, v in hf.model.state_dict().items()}
            if j + 1 < len(steps) and steps[j + 1].position == 0:
                save_atomic(snapshot, work / f"stage{steps[j + 1].stage}.pt")  # what the next stage starts from
            state.update(done=j + 1, model=snapshot)
            save_atomic(state, work / "state.pt")
    return RetrainOutcome(compressor.modules, compressor.compressed_params, total, state["history"],
                            round(state["retrain_seconds"], 1))
