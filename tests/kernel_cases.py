"""The layer kernels on another machine (an aarch64 build under qemu, a WebAssembly build under
Node) against the portable build here: each case is one layer and a few rows of x written to a file
(``tests/native/kernel_check.c`` reads it), and the two builds' outputs must agree bit for bit (the
same C sums in the same order) and hold exactly the stored weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from shrinkformer.runtime import build, contract
from shrinkformer.runtime.layers import LayerArrays, pack_bits

DRIVER = Path(__file__).parent / "native" / "kernel_check.c"
SOURCES = [build.CSRC / "packed_portable.c", build.CSRC / "int8.c", build.CSRC / "prepare.c", build.CSRC / "grouped.c",
           DRIVER]  # called by them


def compile_driver(cc: str, target: Path, extra: list[str], env: dict | None = None) -> Path:
    subprocess.run([cc, "-O3", "-std=c11", f"-I{build.CSRC}", *extra, *map(str, SOURCES), "-o", str(target), "-lm"],
                   check=True, capture_output=True, timeout=300, env=env)
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


INT8_SHAPES = [(32, 64), (16, 40)]  # the int8 layout's blocks: rows in 16s, columns in 8s


def int8_layers(rng: np.random.Generator) -> dict[str, LayerArrays]:
    """4-bit layers the driver lays out for the int8 mode (``--int8``) before multiplying."""
    return {f"int8 {rows}x{cols}": LayerArrays.codebook_layer(
        rows, cols, 4, np.sort(rng.standard_normal(16)).astype(np.float32), pack_bits(rng.integers(0, 16, rows * cols), 4),
        None) for rows, cols in INT8_SHAPES}


GROUPED_SHAPES = [(32, 64), (16, 40), (48, 96)]  # rows in 16s; 40 columns leave a short last group of 3 and of 2
GROUPED_CASE = 64  # kernel_check.c's code for "lay it out as grouped.c does first"


def grouped_layers(rng: np.random.Generator) -> dict[str, LayerArrays]:
    """4-bit layers of 2 to 5 distinct values (of 16 centroids), which grouped.c serves by lookup tables."""
    out = {}
    for values in (2, 3, 4, 5):
        for rows, cols in GROUPED_SHAPES:
            codes = rng.choice(rng.permutation(16)[:values], rows * cols)
            out[f"grouped {values} values {rows}x{cols}"] = LayerArrays.codebook_layer(
                rows, cols, 4, rng.standard_normal(16).astype(np.float32), pack_bits(codes, 4), None)
    return out


def write_case(path: Path, layer: LayerArrays, x: np.ndarray, bias: np.ndarray, int8: bool = False,
               grouped: bool = False) -> None:
    arrays = [layer.index, layer.codebook, layer.values, layer.mask, layer.row_start]
    kind = contract.LAYER_LUT4_INT8 if int8 else GROUPED_CASE if grouped else layer.kind()
    header = [kind, layer.rows, layer.cols, layer.bits, x.shape[0], 1] + [0 if a is None else a.nbytes for a in arrays]
    with open(path, "wb") as f:
        f.write(np.array(header, dtype=np.int64).tobytes())
        for a in arrays:
            if a is not None:
                f.write(np.ascontiguousarray(a).tobytes())
        f.write(x.astype(np.float32).tobytes())
        f.write(bias.astype(np.float32).tobytes())




def check_against_host(tmp_path: Path, other: list[str], name_of_other: str) -> None:
    """Every kind of layer at 1, 5 and 12 rows: ``other`` (a command that runs the driver built
    elsewhere) writes what the host's portable build writes, and that is x @ W.T + b."""
    host = compile_driver("cc", tmp_path / "check-host", [])
    rng = np.random.default_rng(0)
    cases = [(name, layer, "") for name, layer in layers(rng).items()]
    cases += [(name, layer, "int8") for name, layer in int8_layers(rng).items()]
    cases += [(name, layer, "grouped") for name, layer in grouped_layers(rng).items()]
    for name, layer, mode in cases:
        int8 = mode == "int8"
        for m in (1, 5, 12):
            x, bias = rng.standard_normal((m, layer.cols)).astype(np.float32), rng.standard_normal(layer.rows)
            case = tmp_path / "case.bin"
            write_case(case, layer, x, bias, int8, grouped=mode == "grouped")
            outputs = {}
            for which, command in ((name_of_other, other), ("host", [str(host)])):
                result = tmp_path / f"{which}.bin"
                subprocess.run([*command, str(case), str(result)], check=True, timeout=120)
                outputs[which] = np.fromfile(result, dtype=np.float32)
            assert outputs[name_of_other].tobytes() == outputs["host"].tobytes(), (name, m)
            y, w = outputs["host"][: m * layer.rows], outputs["host"][m * layer.rows:]
            dense = layer.dequantize(0, layer.rows)
            assert np.array_equal(w.reshape(layer.rows, layer.cols), dense), name  # exactly the stored weights
            want = x @ dense.T + bias.astype(np.float32)
            if int8:  # 8-bit activations and centroids: within a few of their steps of the exact product
                step = np.abs(x).max(1, keepdims=True) / 127 * np.abs(dense).max() * np.sqrt(layer.cols)
                assert np.abs(y.reshape(m, layer.rows) - want).max() < (4 * step).max(), (name, m)
                assert not np.array_equal(y.reshape(m, layer.rows), want), name  # (it is the int8 product)
            else:
                np.testing.assert_allclose(y.reshape(m, layer.rows), want, rtol=1e-5, atol=1e-4)
