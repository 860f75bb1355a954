import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from shrinkformer.config import load_config
from shrinkformer.errors import CheckpointError, TrainingError
from shrinkformer.checkpoint import load_checkpoint, load_model
from shrinkformer.train.distributed import World
from shrinkformer.data.splits import Split, read_split
from shrinkformer.adapters.transformer import TransformerAdapter
from shrinkformer.train.loop import fit, inverse_sqrt, start_or_resume

from .conftest import TINY, run_cli


def train_cmd(data, out, quiet=True):
    return [sys.executable, "-m", "shrinkformer", *(["-q"] if quiet else []), "train", *TINY,
            "--data-dir", str(data), "--output", str(out)]


def final_state(out):
    payload = load_checkpoint(out / "last.pt")
    return payload["model"], payload["optimizer"]["state"], payload["progress"]


def test_killed_and_resumed_run_ends_bit_for_bit_equal(tmp_path, multi30k):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_cmd(multi30k, straight), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(train_cmd(multi30k, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed / "last.pt")["progress"]
    assert at_kill["batch"] > 0 and not at_kill["finished"], "the kill must land inside an epoch"

    resumed = subprocess.run(train_cmd(multi30k, killed, quiet=False), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {at_kill['epoch'] + 1}, step {at_kill['step']}" in resumed.stderr

    (m1, o1, p1), (m2, o2, p2) = final_state(straight), final_state(killed)
    assert p1["step"] == p2["step"] and p1["history"][-1]["valid_bleu"] == p2["history"][-1]["valid_bleu"]
    for name in m1:
        assert torch.equal(m1[name], m2[name]), name
    for i in o1:
        for key in o1[i]:
            assert torch.equal(o1[i][key], o2[i][key])
    assert torch.equal(load_checkpoint(straight / "model.pt")["model"]["embed_tokens.weight"],
                       load_checkpoint(killed / "model.pt")["model"]["embed_tokens.weight"])
    assert not list(killed.glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other-file"])
def test_damaged_checkpoints_are_one_line_errors(tiny_run, tmp_path, damage):
    data = (tiny_run / "model.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(5000), "empty": b"",
                     "other-file": b""}[damage])
    if damage == "other-file":
        torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: (corrupt or truncated|not a)"):
        load_model(bad)
    result = run_cli("translate", str(bad), stdin="A dog.\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "shrinkformer: error:" in result.stderr


def test_nan_loss_stops_with_the_step(tmp_path, multi30k):
    cfg = load_config("tiny", None, ["data.train_limit=200", "data.valid_limit=10", f"data.data_dir={multi30k}"])
    cfg, tok, model, opt, progress = start_or_resume(cfg, tmp_path, World())
    train = Split.encode(read_split(cfg, "train", 200), tok)
    with torch.no_grad():
        model.decoder.layers[0].ffn.fc1.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"loss became nan at step 1 \(epoch 1\)"):
        fit(TransformerAdapter(model, tok, cfg), cfg, train, train, tmp_path, World(), progress, opt)


def test_warmup_then_inverse_sqrt_decay():
    assert inverse_sqrt(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt(400, 1e-3, 100) == pytest.approx(5e-4)


def test_metrics_and_run_directory(tiny_run):
    import json
    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("bleu", "chrf", "bleu_signature", "wall_seconds", "target_tokens_per_second", "command",
                "torch_version", "machine", "history"):
        assert key in m
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert m["command"].startswith("shrinkformer") and "train" in m["command"]
    assert len(m["history"]) == 3 and {"valid_nll", "valid_bleu"} <= set(m["history"][0])
    assert sorted(p.name for p in tiny_run.glob("epoch*.pt")) == ["epoch002.pt", "epoch003.pt"]
    assert (tiny_run / "best.pt").exists() and (tiny_run / "model.pt").exists()
