"""Data parallel training: two CPU processes under torchrun with the gloo backend."""

import json
import os
import subprocess
import sys

import torch

from shrinkformer.checkpoint import load_checkpoint

from .conftest import TINY


def test_two_process_training_under_torchrun(tmp_path, multi30k):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "shrinkformer", "-q", "train", *TINY, "--set", "train.max_epochs=2",
           "--data-dir", str(multi30k), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
    # Each process takes half of an epoch's batches: half the optimizer steps of one process.
    single = tmp_path / "single"
    subprocess.run([*cmd[:1], "-m", "shrinkformer", *cmd[cmd.index("-q"):-2], "--output", str(single)],
                   check=True, capture_output=True, timeout=300, env=env)
    steps_single = json.loads((single / "metrics.json").read_text())["steps"]
    assert abs(metrics["steps"] - steps_single / 2) <= 2  # per epoch, an odd batch may be dropped
    weights = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
