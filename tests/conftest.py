"""Shared fixtures: the Multi30k files beside the project, and tiny runs trained once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shrinkformer.cli import main

# Tiny models gain nothing from intra-op threads, and one thread keeps tests from fighting over
# the two cores with each other or with a training run.
torch.set_num_threads(1)

MULTI30K = Path(os.environ.get("SHRINKFORMER_TEST_DATA",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"))

# Small enough to train in seconds, large enough to exercise several epochs and checkpoints.
TINY = ["--preset", "tiny", "--set", "data.train_limit=600", "--set", "data.valid_limit=40",
        "--set", "train.threads=1", "--set", "train.save_every_steps=7", "--set", "train.max_epochs=3"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHRINKFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("SHRINKFORMER_DATA", raising=False)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Each test decides anew whether the native library loads, and which variant
    (SHRINKFORMER_NATIVE through the returned monkeypatch); a rebuild goes into its own cache."""
    from shrinkformer.runtime import native
    monkeypatch.setenv("SHRINKFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.tmp = tmp_path
    native.reset()
    yield monkeypatch
    native.reset()


@pytest.fixture(scope="session")
def multi30k() -> Path:
    if not (MULTI30K / "train.en.gz").exists():
        pytest.fail(f"Multi30k not found at {MULTI30K}; set SHRINKFORMER_TEST_DATA")
    return MULTI30K


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, multi30k) -> Path:
    """A tiny model trained once for the tests that only need some model."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert main(["-q", "train", *TINY, "--data-dir", str(multi30k), "--output", str(out)]) == 0
    return out


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a child process: exit codes and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "shrinkformer", *args], input=stdin, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)
