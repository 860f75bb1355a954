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

import numpy as np
import pytest

from shrinkformer.runtime import build
from shrinkformer.runtime.layers import LayerArrays, pack_bits
from tests.test_runtime import KINDS, LINES, packed_model, tokenizer  # noqa: F401 (a fixture)

CROSS = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
DRIVER = Path(__file__).parent / "native" / "kernel_check.c"
SOURCES = [build.CSRC / "packed_portable.c", DRIVER]
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


def compile_driver(cc: str, target: Path, extra: list[str]) -> Path:
    subprocess.run([cc, "-O3", "-std=c11", f"-I{build.CSRC}", *extra, *map(str, SOURCES), "-o", str(target), "-lm"],
                   check=True, capture_output=True, timeout=300)
    return target


def layers(rng: np.random.Generator) -> dict[str, LayerArrays]:
    out = {}
    for rows, cols in [(40, 64), (24, 96), (16, 40)]:  # 40 columns: NEON's 32-wide decoding leaves a tail
        n = rows * cols
        mask = rng.random(n) < 0.4
        out[f"4-bit {rows}x{cols}"] = LayerArrays.codebook_layer(
            rows, cols, 4, np.sort(rng.standard_normal(16)).astype(np.float32), pack_bits(rng.integers(0, 16, n), 4), None)
        out[f"1-bit {rows}x{cols}"] = LayerArrays.codebook_layer(
            rows, cols, 1, np.array([-0.5, 0.7], np.float32), pack_bits(rng.integers(0, 2, n), 1), None)
        for bits in (2, 4):
            out[f"pruned {bits}-bit {rows}x{cols}"] = LayerArrays.codebook_layer(
                rows, cols, bits, rng.standard_normal(2 ** bits).astype(np.float32),
                pack_bits(rng.integers(0, 2 ** bits, int(mask.sum())), bits), mask)
        sparse = LayerArrays(rows, cols, "sparse", 32, values=rng.standard_normal(int(mask.sum())).astype(np.float32))
        sparse._set_mask(mask)
        out[f"sparse {rows}x{cols}"] = sparse
        out[f"fp32 {rows}x{cols}"] = LayerArrays.dense(rng.standard_normal((rows, cols)).astype(np.float32))
    return out


def write_case(path: Path, layer: LayerArrays, x: np.ndarray, bias: np.ndarray) -> None:
    arrays = [layer.index, layer.codebook, layer.values, layer.mask, layer.row_start]
    header = [layer.kind(), layer.rows, layer.cols, layer.bits, x.shape[0], 1] + [0 if a is None else a.nbytes for a in arrays]
    with open(path, "wb") as f:
        f.write(np.array(header, dtype=np.int64).tobytes())
        for a in arrays:
            if a is not None:
                f.write(np.ascontiguousarray(a).tobytes())
        f.write(x.astype(np.float32).tobytes())
        f.write(bias.astype(np.float32).tobytes())


@pytest.mark.skipif(CROSS is None or QEMU is None, reason="no aarch64 cross compiler or qemu-aarch64 here")
def test_aarch64_kernels_compute_what_the_portable_kernels_compute_here(tmp_path):
    arm = compile_driver(CROSS, tmp_path / "check-aarch64", ["-static", "-march=armv8-a"])
    host = compile_driver("cc", tmp_path / "check-host", [])
    rng = np.random.default_rng(0)
    for name, layer in layers(rng).items():
        for m in (1, 5, 12):
            x, bias = rng.standard_normal((m, layer.cols)).astype(np.float32), rng.standard_normal(layer.rows)
            case = tmp_path / "case.bin"
            write_case(case, layer, x, bias)
            outputs = {}
            for which, command in (("aarch64", [QEMU, str(arm)]), ("host", [str(host)])):
                result = tmp_path / f"{which}.bin"
                subprocess.run([*command, str(case), str(result)], check=True, timeout=120)
                outputs[which] = np.fromfile(result, dtype=np.float32)
            assert outputs["aarch64"].tobytes() == outputs["host"].tobytes(), (name, m)
            y, w = outputs["aarch64"][: m * layer.rows], outputs["aarch64"][m * layer.rows:]
            dense = layer.dequantize(0, layer.rows)
            assert np.array_equal(w.reshape(layer.rows, layer.cols), dense), name  # exactly the stored weights
            np.testing.assert_allclose(y.reshape(m, layer.rows), x @ dense.T + bias.astype(np.float32), rtol=1e-5,
                                       atol=1e-4)


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
