"""A 4-bit kernel (``--kernel``: the AVX2 one by default, or ``lut4_matmul_t_avx512``) of two versions of ``packed_kernels.c`` side by side: the source at a git
revision against the working tree's, both compiled as the package compiles them and loaded into one
process, called alternately on the same packed weights (cycled from DRAM), median of rounds. For
deciding whether a kernel change pays, where run-to-run noise on a shared machine is as large as
the change (the speed-ups in kernels.json move by up to 20% between runs an hour apart).

    python benchmarks/kernel_ab.py --base 45c8aa6 --out results/benchmarks/kernel_ab.json
"""

from __future__ import annotations

import argparse
import ctypes
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import interleaved, median, report, timed

from shrinkformer.runtime import build as runtime_build
from shrinkformer.runtime import native

SOURCE = runtime_build.CSRC / "packed_kernels.c"

SHAPES = {"512->512": (512, 512), "512->2048": (2048, 512), "2048->512": (512, 2048), "output 512->8000": (8000, 256)}


def build(source: bytes, where: Path, name: str) -> ctypes.CDLL:
    src, lib = where / f"{name}.c", where / f"{name}.so"
    src.write_bytes(source)
    flags = [*runtime_build.FLAGS, *runtime_build.VARIANTS["x86"][1], f"-I{runtime_build.CSRC}"]
    subprocess.run(["cc", *flags, runtime_build.OPENMP_FLAG, str(src), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision whose kernel source is the reference")
    p.add_argument("--rows", default="1,2,3,4,5,8,16")
    p.add_argument("--megabytes", type=float, default=50, help="packed weights cycled through per shape")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kernel", default="lut4_matmul_t_avx2", choices=["lut4_matmul_t_avx2", "lut4_matmul_t_avx512"])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.kernel.endswith("avx512") and not native.wide():
        sys.exit("kernel_ab.py: this CPU has no AVX-512 (or SHRINKFORMER_NATIVE=avx2): use the AVX2 kernel")
    torch.set_num_threads(args.threads)
    rel = SOURCE.resolve().relative_to(Path(__file__).resolve().parents[1])
    base_src = subprocess.run(["git", "show", f"{args.base}:{rel}"], capture_output=True, check=True).stdout
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"base": build(base_src, Path(tmp), "base"), "new": build(SOURCE.read_bytes(), Path(tmp), "new")}
        for shape, (n, k) in SHAPES.items():
            layers = [torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8)
                      for _ in range(max(2, min(200, int(args.megabytes * 2**20 / (n * k // 2)))))]
            codebook = torch.randn(16)
            for m in (int(r) for r in args.rows.split(",")):
                x, y, scratch = torch.randn(m, k), torch.empty(m, n), torch.empty(m * (k + 64))

                def run(lib: ctypes.CDLL) -> float:
                    f = getattr(lib, args.kernel)
                    return timed(lambda: [f(ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(m), ctypes.c_int64(k),
                                            ctypes.c_void_p(w.data_ptr()), ctypes.c_int64(n),
                                            ctypes.c_void_p(codebook.data_ptr()), None, ctypes.c_void_p(y.data_ptr()),
                                            ctypes.c_void_p(scratch.data_ptr())) for w in layers]) / len(layers)
                times = {name: median(t) for name, t in
                         interleaved({name: (lambda lib=lib: run(lib)) for name, lib in libs.items()}, args.rounds).items()}
                results.append({"shape": shape, "rows": m, "base_ms": round(1e3 * times["base"], 4),
                                "new_ms": round(1e3 * times["new"], 4),
                                "new_speedup": round(times["base"] / times["new"], 3)})
                print(results[-1], file=sys.stderr)
    report("kernel_ab", {"command": "python kernel_ab.py " + shlex.join(sys.argv[1:]), "base": args.base,
                         "kernel": args.kernel, "results": results, "threads": args.threads}, args.out)


if __name__ == "__main__":
    main()
