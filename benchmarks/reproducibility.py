"""Does one ``compress`` command write the same bytes every time, at the real model size?

On the committed Multi30k baseline (7.6M parameters), prune+kmeans (50%, 4 bits) with one epoch of
retraining on the first N pairs: twice uninterrupted and once killed inside the retraining and
resumed, at ``--threads 1``; twice at the default thread count. Reports each file's SHA-256, which
runs are byte-identical, and for runs that differ the tensors that differ and by how much.

    python benchmarks/reproducibility.py --out results/benchmarks/reproducibility.json

Bar (issue: a first run that computes, item 6): under the documented condition (the same
``--threads``), the runs and the resumed run write byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, report

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "multi30k" / "models" / "baseline.sfz"


def command(out: Path, threads: int | None, limit: int) -> list[str]:
    return [sys.executable, "-m", "shrinkformer", "-q", "compress", str(BASELINE), "--method", "prune+kmeans",
            "--sparsity", "0.5", "--bits", "4", "--retrain-epochs", "1", "--train-limit", str(limit),
            "--save-every", "4", "--no-test", "--data-dir", str(DATA), "-o", str(out),
            *(["--threads", str(threads)] if threads else [])]


def killed_and_resumed(out: Path, threads: int | None, limit: int) -> float:
    """Kill the run once its first snapshot inside the retraining exists, then run it again."""
    started = time.perf_counter()
    work = out.with_name(out.name + ".work")
    proc = subprocess.Popen(command(out, threads, limit), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(work.glob("step*/last.pt")):
        time.sleep(0.05)
    time.sleep(1.0)  # a little past the snapshot: the kill lands mid-epoch
    if proc.poll() is not None:
        raise SystemExit("the run ended before it could be killed; raise --train-limit")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(command(out, threads, limit), check=True, capture_output=True)
    return time.perf_counter() - started


def differences(a: Path, b: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        names = sorted(set(fa.keys()) | set(fb.keys()))
        differ = {}
        for name in names:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.shape != y.shape or not torch.equal(x, y):
                differ[name] = float((x.double() - y.double()).abs().max()) if x.shape == y.shape else "shape"
    return {"tensors": len(names), "differing": len(differ), "max_difference": max(
        [v for v in differ.values() if isinstance(v, float)], default=0.0), "first": dict(list(differ.items())[:5])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-limit", type=int, default=300)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, threads, kill in [("threads1-a", 1, False), ("threads1-b", 1, False), ("threads1-resumed", 1, True),
                                    ("default-a", None, False), ("default-b", None, False)]:
            out = Path(tmp) / f"{name}.sfz"
            started = time.perf_counter()
            if kill:
                killed_and_resumed(out, threads, args.train_limit)
            else:
                subprocess.run(command(out, threads, args.train_limit), check=True, capture_output=True)
            runs[name] = {"threads": threads or "default", "killed_and_resumed": kill, "file_bytes": out.stat().st_size,
                          "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                          "seconds": round(time.perf_counter() - started, 1), "path": out}
            print(f"{name}: {runs[name]['sha256'][:16]}", file=sys.stderr, flush=True)
        pairs = {"threads1 twice": ("threads1-a", "threads1-b"), "threads1 resumed": ("threads1-a", "threads1-resumed"),
                 "default twice": ("default-a", "default-b"), "threads1 vs default": ("threads1-a", "default-a")}
        compared = {}
        for label, (a, b) in pairs.items():
            same = runs[a]["sha256"] == runs[b]["sha256"]
            compared[label] = {"identical_bytes": same,
                               **({} if same else differences(runs[a]["path"], runs[b]["path"]))}
    for r in runs.values():
        del r["path"]
    result = {"command": "python benchmarks/reproducibility.py " + shlex.join(sys.argv[1:]),
              "model": str(BASELINE.relative_to(ROOT)), "train_limit": args.train_limit,
              "identical_at_threads1": compared["threads1 twice"]["identical_bytes"],
              "resumed_identical_at_threads1": compared["threads1 resumed"]["identical_bytes"],
              "identical_at_default_threads": compared["default twice"]["identical_bytes"],
              "comparisons": compared, "runs": runs}
    report("reproducibility", result, args.out)


if __name__ == "__main__":
    main()
