"""Native kernels for packed layers (``csrc/packed_kernels.c``): compiled on first use with the
system's C compiler into a cache, loaded with ctypes, called on tensors' data pointers. Built
with OpenMP where the compiler has it: the rows of W are split across torch's threads.

No compiler, a CPU without AVX2/FMA, or ``SHRINKFORMER_NATIVE=0``: the pure-PyTorch tile path does
the work instead, after one warning. The kernels and the tile path compute the same products (up to
the order of float additions); tests compare them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "packed_kernels.c"
FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-std=c11"]
OPENMP_FLAG = "-fopenmp"
# Above this many rows of x a dequantized tile and BLAS win (measured with benchmarks/kernels.py at
# base-preset shapes, AVX2, 2 threads: the crossover lies between 12 and 24 rows for codebook
# layers and between 8 and 12 for pruned ones).
MAX_ROWS = 16
MAX_MASKED_ROWS = 8
KERNELS = {4: "lut4_matmul_t_avx2", 1: "bin1_matmul_t"}
AVX512_KERNELS = {4: "lut4_matmul_t_avx512", 1: "bin1_matmul_t_avx512"}
SPARSE_KERNELS = {"sparse": "sparse_matmul_t", "codebook": "lut4_sparse_matmul_t"}  # pruned layers, by encoding
AVX512_SPARSE_KERNELS = {enc: name + "_avx512" for enc, name in SPARSE_KERNELS.items()}
SCRATCH = {"lut4_matmul_t_avx2", "lut4_matmul_t_avx512"}  # kernels that take a scratch buffer of M * K floats
PARALLEL_FROM = 1 << 22  # weights per call from which the rows of W are split across threads (output projection)

_library: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None


def _cache_dir() -> Path:
    root = os.environ.get("SHRINKFORMER_CACHE", Path.home() / ".cache" / "shrinkformer")
    return Path(root) / "kernels"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask torch what it dispatches to
        cap = torch.backends.cpu.get_cpu_capability()
        flags = {"avx2", "fma"} if cap in ("AVX2", "AVX512") else set()
        return frozenset(flags | ({"avx512f", "avx512bw"} if cap == "AVX512" else set()))
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())


def _cpu_supported() -> bool:
    return {"avx2", "fma"} <= _cpu_flags()


def _kernel_names() -> dict[int, str]:
    """The AVX-512 kernels where the CPU has them (and SHRINKFORMER_NATIVE is not "avx2")."""
    wide = {"avx512f", "avx512bw"} <= _cpu_flags() and os.environ.get("SHRINKFORMER_NATIVE") != "avx2"
    return AVX512_KERNELS if wide else KERNELS


def _compile() -> Path:
    """The compiled library: with OpenMP (rows split across torch's threads) where the compiler
    has it, else without (one thread)."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler ({cc}) on PATH")
    try:
        return _build(cc, [*FLAGS, OPENMP_FLAG])
    except OSError:
        return _build(cc, FLAGS)


def _build(cc: str, flags: list[str]) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"packed_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise OSError(f"{cc} failed: {result.stderr.strip().splitlines()[-1] if result.stderr else result.returncode}")
        os.replace(tmp, target)  # concurrent first uses each compile; the last one wins, all identical
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning) when they cannot be had here."""
    global _library, _tried
    if _tried:
        return _library
    _tried = True
    reason = None
    if os.environ.get("SHRINKFORMER_NATIVE", "1") == "0":
        reason = "SHRINKFORMER_NATIVE=0"
    elif not _cpu_supported():
        reason = "this CPU lacks AVX2/FMA"
    else:
        try:
            lib = ctypes.CDLL(str(_compile()))
            for name in [*KERNELS.values(), *AVX512_KERNELS.values()]:
                fn = getattr(lib, name)
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] + \
                    ([ctypes.c_void_p] if name in SCRATCH else [])
            for name in [*SPARSE_KERNELS.values(), *AVX512_SPARSE_KERNELS.values()]:
                fn = getattr(lib, name)
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3 + \
                    [ctypes.c_int64] + [ctypes.c_void_p] * 3
            lib.lut_dequant.restype = lib.masked_dequant.restype = None
            lib.lut_dequant.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p, ctypes.c_void_p]
            lib.masked_dequant.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
            lib.packed_kernels_init()
            _library = lib
        except (OSError, subprocess.SubprocessError, AttributeError) as err:
            reason = f"cannot build them ({err})"
    if reason:
        warnings.warn(f"packed layers run on the pure-PyTorch tile path, slower than the native kernels: {reason}",
                      RuntimeWarning, stacklevel=3)
    return _library


_generation = 0  # moves on each reset(): kernels bound to a layer before it are bound again


def generation() -> int:
    return _generation


def reset() -> None:
    """Forget the loaded library (tests switch paths with this)."""
    global _library, _tried, _generation
    _library, _tried = None, False
    _generation += 1
    _kernel.cache_clear()
    _sparse_kernel.cache_clear()
    _threaded.cache_clear()


@functools.lru_cache(maxsize=None)
def _kernel(bits: int):
    return getattr(library(), _kernel_names()[bits])


@functools.lru_cache(maxsize=None)
def _threaded() -> bool:
    """Whether the kernels split their rows across OpenMP threads themselves."""
    return bool(library().packed_kernels_threaded())


@functools.lru_cache(maxsize=None)
def _sparse_kernel(encoding: str):
    wide = _kernel_names() is AVX512_KERNELS
    return getattr(library(), (AVX512_SPARSE_KERNELS if wide else SPARSE_KERNELS)[encoding])


def supports(bits: int, cols: int, x: Tensor) -> bool:
    return (bits in KERNELS and cols % 8 == 0 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.numel() // cols <= MAX_ROWS and library() is not None)


def matmul_t(bits: int, x: Tensor, index: Tensor, rows: int, table: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., K) @ W.T (+ bias) for a W of ``rows`` rows stored as packed ``bits``-bit indices into
    ``table`` (2**bits fp32 values). Called once per layer and decoding step: kept lean."""
    fn = _kernel(bits)
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], rows, dtype=torch.float32)
    row_bytes = cols * bits // 8

    def run(r0: int, r1: int, dest: Tensor) -> None:
        scratch = torch.empty(x2.numel()) if fn.__name__ in SCRATCH else None  # alive until the call returns
        fn(x2.data_ptr(), x2.shape[0], cols, index.data_ptr() + r0 * row_bytes, r1 - r0, table.data_ptr(),
           None if bias is None else bias.data_ptr() + 4 * r0, dest.data_ptr(),
           *(() if scratch is None else (scratch.data_ptr(),)))

    threads = torch.get_num_threads()
    if threads > 1 and rows * cols >= PARALLEL_FROM and not _threaded():  # ctypes releases the GIL
        global _pool
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shrinkformer-kernel")
        bounds = [rows * i // threads for i in range(threads + 1)]
        parts = [torch.empty(x2.shape[0], r1 - r0) for r0, r1 in zip(bounds, bounds[1:])]
        list(_pool.map(lambda a: run(*a), [(r0, r1, p) for (r0, r1), p in zip(zip(bounds, bounds[1:]), parts)]))
        out = torch.cat(parts, dim=1)
    else:
        run(0, rows, out)
    return out.view(*x.shape[:-1], rows)


DEQUANT_BITS = (1, 4, 8)


def dequantize(index: Tensor, bits: int, start: int, table: Tensor, out: Tensor) -> bool:
    """Fill ``out`` with the centroid values of b-bit indices start..start + out.numel() (``table``
    padded to 2**bits entries); False, untouched, where no kernel serves it."""
    lib = library()
    if lib is None or bits not in DEQUANT_BITS:
        return False
    lib.lut_dequant(index.data_ptr(), bits, start, out.numel(), table.data_ptr(), out.data_ptr())
    return True


def dequantize_masked(mask: Tensor, row_start: Tensor, survivors: Tensor, table: Tensor | None, r0: int,
                      out: Tensor) -> bool:
    """Fill ``out`` (rows r0.., K columns, K a multiple of 8) with a pruned layer's rows: fp32
    survivors (``table`` None) or 4-bit indices into ``table``; False, untouched, where no kernel
    serves it."""
    lib = library()
    rows, cols = out.shape
    if lib is None or cols % 8:
        return False
    lib.masked_dequant(mask.data_ptr(), row_start.data_ptr(), survivors.data_ptr(), cols, r0, r0 + rows,
                       None if table is None else table.data_ptr(), out.data_ptr())
    return True


def bind(bits: int, rows: int, cols: int, encoding: str = "codebook", masked: bool = False
         ) -> Callable[..., Tensor] | None:
    """The kernel for one layer's shape, checked once: ``call(x2, args)`` for a contiguous fp32 x2
    of at most MAX_ROWS (pruned layers: MAX_MASKED_ROWS) rows, or None where no kernel serves the layer. Decoding calls each layer
    once per step; what ``matmul_t`` decides per call is decided here per layer."""
    if library() is None:
        return None
    if masked:
        if not ((encoding == "sparse" or bits == 4) and cols % 16 == 0):
            return None
        fn = _sparse_kernel(encoding)

        def call_masked(x2: Tensor, mask: Tensor, row_start: Tensor, survivors: Tensor, table: Tensor | None,
                        bias: Tensor | None) -> Tensor:
            out = torch.empty(x2.shape[0], rows, dtype=torch.float32)
            fn(x2.data_ptr(), x2.shape[0], cols, mask.data_ptr(), row_start.data_ptr(), survivors.data_ptr(), rows,
               None if table is None else table.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr())
            return out
        return call_masked
    if bits not in KERNELS or cols % 8 or (rows * cols >= PARALLEL_FROM and not _threaded()):
        return None  # the general path splits large layers across a thread pool
    fn = _kernel(bits)
    scratch = fn.__name__ in SCRATCH

    def call(x2: Tensor, index: Tensor, table: Tensor, bias: Tensor | None) -> Tensor:
        out = torch.empty(x2.shape[0], rows, dtype=torch.float32)
        b = None if bias is None else bias.data_ptr()
        if scratch:
            buffer = torch.empty(x2.numel())
            fn(x2.data_ptr(), x2.shape[0], cols, index.data_ptr(), rows, table.data_ptr(), b, out.data_ptr(),
               buffer.data_ptr())
        else:
            fn(x2.data_ptr(), x2.shape[0], cols, index.data_ptr(), rows, table.data_ptr(), b, out.data_ptr())
        return out
    return call
