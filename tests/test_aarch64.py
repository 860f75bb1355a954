"""The runtime built for aarch64 (the portable kernels, with NEON's table lookup for 4-bit layers)
computes what the portable build computes on this machine: the kernels bit for bit (the same C
sums in the same order, exactly the stored weights), and whole translations under an aarch64
Python, line for line. Run under qemu-aarch64; skipped where the cross compiler, qemu or the
aarch64 Python is not here (Debian: gcc-aarch64-linux-gnu, qemu-user-static; `.ci/aarch64-sysroot`
unpacks the Python; `.ci/run` sets all three up). ARM speed is not measured here: qemu emulates."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shrinkformer.runtime import build
from tests.kernel_cases import check_against_host, compile_driver
from tests.test_runtime import KINDS, LINES, packed_model, tokenizer  # noqa: F401 (a fixture)

CROSS = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
SYSROOT = Path(os.environ.get("SHRINKFORMER_AARCH64_SYSROOT",
                              Path.home() / ".cache" / "shrinkformer" / "aarch64-sysroot"))
ARM_PYTHON = SYSROOT / "root" / "usr" / "bin" / "python3.11"
PACKAGE = Path(build.__file__).resolve().parents[1]  # src/shrinkformer
TRANSLATE = """import json, sys
from shrinkformer.runtime import native
from shrinkformer.runtime.translator import Translator
jobs = json.loads(open(sys.argv[1]).read())
out = {"variant": native.loaded_variant(), "lines": {}}
for path, batch, lines in jobs:
    out["lines"][f"{path}:{batch}"] = Translator.load(path, batch_sentences=batch, threads=1).translate(lines)
open(sys.argv[2], "w").write(json.dumps(out))
"""


@pytest.mark.skipif(CROSS is None or QEMU is None, reason="no aarch64 cross compiler or qemu-aarch64 here")
def test_aarch64_kernels_compute_what_the_portable_kernels_compute_here(tmp_path):
    arm = compile_driver(CROSS, tmp_path / "check-aarch64", ["-static", "-march=armv8-a"])
    check_against_host(tmp_path, [QEMU, str(arm)], "aarch64")


@pytest.mark.skipif(CROSS is None or QEMU is None or not ARM_PYTHON.exists(),
                    reason="no aarch64 cross compiler, qemu-aarch64 or aarch64 Python (.ci/aarch64-sysroot) here")
def test_the_aarch64_runtime_translates_as_the_portable_runtime_here(tmp_path, tokenizer):  # noqa: F811
    """Every kind of layer, pre- and post-norm, at batch 1 and in batches past the kernels' rows."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "shrinkformer", ignore=shutil.ignore_patterns("_lib", "__pycache__"))
    build.build("portable", site / "shrinkformer" / "runtime" / "_lib" / build.library_name("portable"), cc=CROSS)
    jobs = []
    for kind in KINDS:
        for pre_norm in (True, False):
            path = str(packed_model(tmp_path, tokenizer, kind, pre_norm, huffman=kind == "pruned 4-bit"))
            jobs += [(path, 1, LINES), (path, 8, LINES * 3)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "translate.py").write_text(TRANSLATE)
    results = {}
    for which, python, path in (("aarch64", [QEMU, "-L", str(SYSROOT / "root"), str(ARM_PYTHON)],
                                 f"{site}{os.pathsep}{SYSROOT / 'site'}"),
                                ("host", [sys.executable], str(PACKAGE.parent))):
        env = {**os.environ, "PYTHONPATH": path, "SHRINKFORMER_NATIVE": "portable", "OMP_NUM_THREADS": "1",
               "SHRINKFORMER_CACHE": str(tmp_path / f"cache-{which}")}
        subprocess.run([*python, str(tmp_path / "translate.py"), str(tmp_path / "jobs.json"),
                        str(tmp_path / f"{which}.json")], check=True, env=env, timeout=900)
        results[which] = json.loads((tmp_path / f"{which}.json").read_text())
    assert results["aarch64"]["variant"] == results["host"]["variant"] == "portable"
    for key, lines in results["host"]["lines"].items():
        assert results["aarch64"]["lines"][key] == lines, key
