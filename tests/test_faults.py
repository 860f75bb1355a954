"""The README's promise under faults: a full disk during each long command, a read-only output, two
processes on one output, a kill in the middle of a write. Each gives one line naming the path and
the cause, exit 1 (2 for a busy output), nothing half-written under a final name, and what was
saved before intact, so the same command run again (after freeing space) finishes.

A full disk is a small tmpfs where the tests run as root (mount works), else a file-size limit
(RLIMIT_FSIZE: the same failing write, reported as "File too large")."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY

COMPRESS = ["--method", "kmeans", "--bits", "2", "--retrain-epochs", "1", "--train-limit", "200", "--no-test",
            "--save-every", "3", "--threads", "1"]


class Disk:
    """A directory that holds ``size`` bytes: a tmpfs (root) or one under a file-size limit."""

    def __init__(self, root: Path, size: int) -> None:
        self.path, self.size = root / "disk", size
        self.path.mkdir()
        self.tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                                    capture_output=True).returncode == 0
        self.reason = "No space left on device" if self.tmpfs else "File too large"

    def run(self, *args: str, limited: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        """The CLI in a child process, writing into this disk (limited) or with space to spare."""
        def limit():  # without tmpfs: no file may grow past the disk's size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))

        return subprocess.run([sys.executable, "-m", "shrinkformer", "-q", *args], capture_output=True, text=True,
                              input=stdin, timeout=300, preexec_fn=limit if limited and not self.tmpfs else None)

    def free(self, size: int = 200 << 20) -> None:
        """Room again, as a user who deleted something."""
        if self.tmpfs:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def read_only(self) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        else:
            self.path.chmod(0o555)

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        else:
            self.path.chmod(0o755)


@pytest.fixture
def disk(tmp_path):
    made: list[Disk] = []

    def make(size: int) -> Disk:
        made.append(Disk(tmp_path, size))
        return made[-1]

    yield make
    for d in made:
        d.close()


def one_line_error(result: subprocess.CompletedProcess, path_prefix: Path, reason: str, code: int = 1) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith(f"shrinkformer: error: cannot write {path_prefix}"), result.stderr
    assert reason in result.stderr, result.stderr


def no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], list(root.rglob("*"))


def test_full_disk_during_training_then_the_same_command_resumes(disk, multi30k):
    d = disk(96 << 10)
    run = d.path / "run"
    args = ["train", *TINY, "--data-dir", str(multi30k), "--output", str(run)]
    failed = d.run(*args)
    one_line_error(failed, d.path, d.reason)
    assert not (run / "model.pt").exists()
    no_temporaries(d.path)
    d.free()
    again = d.run(*args, limited=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "model.pt").exists() and json.loads((run / "metrics.json").read_text())["bleu"] >= 0


def test_full_disk_during_compress_then_the_same_command_writes_the_same_file(disk, tiny_run, multi30k, tmp_path):
    d = disk(160 << 10)
    out = d.path / "m.sfz"
    args = ["compress", str(tiny_run / "model.pt"), *COMPRESS, "--data-dir", str(multi30k), "-o", str(out)]
    failed = d.run(*args)
    one_line_error(failed, d.path, d.reason)
    assert not out.exists()
    no_temporaries(d.path)
    d.free()
    again = d.run(*args, limited=False)
    assert again.returncode == 0, again.stderr[-2000:]
    straight = tmp_path / "straight.sfz"
    assert d.run(*args[:-1], str(straight), limited=False).returncode == 0
    assert out.read_bytes() == straight.read_bytes()  # --threads 1: the same bytes, resumed or not


def test_full_disk_during_translation_leaves_no_output(disk, tiny_run):
    d = disk(16 << 10)
    out = d.path / "out.de"
    failed = d.run("translate", str(tiny_run / "model.pt"), "--beam", "1", "-o", str(out), stdin="A dog runs.\n" * 3000)
    one_line_error(failed, out, d.reason)
    assert not out.exists()
    no_temporaries(d.path)


def test_full_disk_during_a_sweep_row_keeps_the_rows_before_it(disk, tiny_run, multi30k):
    d = disk(64 << 10)
    out = d.path / "sweep"
    args = ["reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out), "--baseline",
            str(tiny_run / "model.pt"), "--threads", "1", "--only", "kmeans-4bit-all"]
    failed = d.run(*args)
    one_line_error(failed, d.path, d.reason)
    no_temporaries(d.path)
    d.free()
    again = d.run(*args, limited=False)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = {r["name"]: r["status"] for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows == {"baseline": "ok", "control": "ok", "kmeans-4bit-all": "ok"}


@pytest.mark.parametrize("command", ["export", "attention"])
def test_full_disk_during_export_and_attention_leaves_no_output(disk, tiny_run, multi30k, command):
    d = disk(24 << 10)
    out = d.path / "out"
    args = {"export": ["export", str(tiny_run / "model.pt"), "--format", "ctranslate2", "-o", str(out)],
            "attention": ["attention", str(tiny_run / "model.pt"), "--data-dir", str(multi30k), "--sentences", "20",
                          "--test-sentences", "20", "--k", "2,4", "--beam", "1", "-o", str(out)]}[command]
    result = d.run(*args)
    one_line_error(result, out, d.reason)
    assert not (out / "model.bin").exists() and not (out / "attention.json").exists()
    no_temporaries(d.path)


@pytest.mark.parametrize("command", ["train", "compress", "translate"])
def test_a_read_only_output_is_one_line(disk, tiny_run, multi30k, command):
    d = disk(8 << 20)
    d.read_only()
    if not d.tmpfs and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories, and mount is not available here")
    out = d.path / "out"
    args = {"train": ["train", *TINY, "--data-dir", str(multi30k), "--output", str(out)],
            "compress": ["compress", str(tiny_run / "model.pt"), *COMPRESS, "--data-dir", str(multi30k), "-o",
                         str(out)],
            "translate": ["translate", str(tiny_run / "model.pt"), "-o", str(out)]}[command]
    result = d.run(*args, stdin="A dog.\n", limited=False)
    reason = "Read-only file system" if d.tmpfs else "Permission denied"
    one_line_error(result, out, reason)
    assert not any(d.path.iterdir())


def start_and_wait_for(args: list[str], lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "shrinkformer", "-q", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text()).get("pid") == proc.pid:
                return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"{args[0]} never held {lock}: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("command", ["train", "compress", "reproduce"])
def test_a_second_process_on_one_output_is_told_who_holds_it(tiny_run, multi30k, tmp_path, command):
    out = tmp_path / "out"
    args, lock, what = {
        "train": (["train", *TINY, "--set", "train.max_epochs=30", "--data-dir", str(multi30k), "--output", str(out)],
                  out / ".lock", f"run directory {out}"),
        "compress": (["compress", str(tiny_run / "model.pt"), *COMPRESS, "--retrain-epochs", "30", "--data-dir",
                      str(multi30k), "-o", str(out / "m.sfz")], out / "m.sfz.work.lock", f"work directory {out}/m.sfz.work"),
        "reproduce": (["reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out), "--baseline",
                       str(tiny_run / "model.pt"), "--threads", "1"], out / "cache" / "baseline.lock",
                      "sweep row "),  # the row the first process is on when the second gets there
    }[command]
    first = start_and_wait_for(args, lock)
    try:
        second = subprocess.run([sys.executable, "-m", "shrinkformer", "-q", *args], capture_output=True, text=True,
                                timeout=120)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.count("\n") == 1
    assert second.stderr.startswith(f"shrinkformer: error: {what}"), second.stderr
    assert f" is in use by pid {first.pid} on " in second.stderr, second.stderr
    assert command in second.stderr  # the holder's command line
    # Released when its holder dies, however it dies: a killed run is resumed by the next one.
    from shrinkformer.locks import hold

    with hold(lock, what):
        pass


WRITER = """import sys, time
from shrinkformer.io import atomic_write
with atomic_write(sys.argv[1]) as f:
    for i in range(10_000):
        f.write(b"new " * 4096)
        f.flush()
        if i == 3:
            print("writing", flush=True)
        time.sleep(0.001)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "the new file is being written aside"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"


TIMINGS = {"wall_seconds", "retrain_seconds", "seconds", "train_seconds"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_row_jobs_on_one_cache_render_what_one_process_renders(tiny_run, multi30k, tmp_path):
    """Two ``reproduce --only ROW`` processes at once on one output (each also needs the baseline
    and control rows: one computes them, the other waits), then ``--cached`` renders."""
    rows = ["kmeans-4bit-all", "kmeans-2bit-all"]

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "shrinkformer", "-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k),
                "-o", str(out), "--baseline", str(tiny_run / "model.pt"), "--threads", "1", *extra]

    shared, single = tmp_path / "shared", tmp_path / "single"
    jobs = [subprocess.Popen(command(shared, "--only", row), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for row in rows]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()[-2000:]
    subprocess.run(command(shared, "--cached", "--only", ",".join(rows)), check=True, capture_output=True, timeout=300)
    subprocess.run(command(single, "--only", ",".join(rows)), check=True, capture_output=True, timeout=600)
    a, b = (json.loads((out / "results.json").read_text()) for out in (shared, single))
    assert sorted(r["name"] for r in a["rows"]) == sorted(["baseline", "control", *rows])
    assert all(r["status"] == "ok" for r in a["rows"])
    assert without_timings(a["rows"]) == without_timings(b["rows"])
    assert a["comparisons"] == b["comparisons"]

    def report(out: Path) -> list[str]:
        return [line.replace(str(out), "OUT") for line in (out / "report.md").read_text().splitlines()
                if "this run took" not in line and not line.startswith("Command:")]

    assert report(shared) == report(single)
