"""Native kernels for packed layers (``csrc/packed_kernels.c``, and a whole decoding step over
them in ``csrc/decoder_step.c``, driven by ``decoder_step.py``): compiled on first use with the
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

SOURCE = Path(__file__).parent / "csrc" / "packed_kernels.c"  # the layer kernels
# and beside them: decoder_step.c (a whole decoding step over them, decoder_step.py) and
# beam_select.c (the search's selection half, native_search.py); one library holds all
FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-std=c11", f"-I{SOURCE.parent}"]
OPENMP_FLAG = "-fopenmp"
# Above this many rows of x a dequantized tile and BLAS win (measured with benchmarks/kernels.py at
# base-preset shapes, AVX2, 2 threads: the crossover lies between 12 and 24 rows for codebook
# layers and between 8 and 12 for pruned ones).
MAX_ROWS = 16
MAX_MASKED_ROWS = 8
MAX_1BIT_ROWS = 64  # the 1-bit kernel's tables serve 8 rows of x per pass at a fraction of fp32's cost
MAX_DENSE_ROWS = 8  # the fp32 kernel (a decoding step's uncompressed layers): one pass over W for 8 rows
PARALLEL_FROM = 1 << 22  # weights per call from which a build without OpenMP splits rows across a thread pool

_library: ctypes.CDLL | None = None
_tried = False
_sgemm: int | None = None  # the BLAS sgemm the loaded library hands large products to (see _blas_sgemm)
_pools: dict[int, ThreadPoolExecutor] = {}  # by thread count


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


def _wide() -> bool:
    """Whether the AVX-512 kernels run (the CPU has them and SHRINKFORMER_NATIVE is not "avx2")."""
    return {"avx512f", "avx512bw"} <= _cpu_flags() and os.environ.get("SHRINKFORMER_NATIVE") != "avx2"


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
    sources = sorted(SOURCE.parent.glob("*.[ch]"))
    key = hashlib.sha256(b"".join(f.read_bytes() for f in sources) + " ".join(flags).encode()
                         + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"packed_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run([cc, *flags, *(str(f) for f in sources if f.suffix == ".c"), "-o", tmp, "-lm"],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise OSError(f"{cc} failed: {result.stderr.strip().splitlines()[-1] if result.stderr else result.returncode}")
        os.replace(tmp, target)  # concurrent first uses each compile; the last one wins, all identical
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning) when they cannot be had here."""
    global _library, _tried, _sgemm
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
            lib.lut_dequant.restype = lib.masked_dequant.restype = None
            lib.lut_dequant.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p, ctypes.c_void_p]
            lib.masked_dequant.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            lib.packed_layer_matmul_t.restype = None
            lib.packed_layer_matmul_t.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 2
            lib.decoder_step.restype = None
            lib.decoder_step.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4
            lib.encoder_forward.restype = None
            lib.encoder_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3
            lib.encoder_scratch.restype = ctypes.c_int64
            lib.encoder_scratch.argtypes = [ctypes.c_void_p, ctypes.c_int64]
            lib.decoder_step_scratch.restype = ctypes.c_int64
            lib.decoder_step_scratch.argtypes = [ctypes.c_void_p, ctypes.c_int64]
            lib.decoder_step_configure.restype = None
            lib.decoder_step_configure.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4
            lib.decoder_project.restype = None
            lib.decoder_project.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
            lib.decoder_tile_floats.restype = ctypes.c_int64
            lib.beam_select.restype = ctypes.c_int64
            lib.beam_select.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + \
                [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4
            _sgemm = _blas_sgemm()
            lib.decoder_step_configure(_sgemm, MAX_ROWS, MAX_1BIT_ROWS, MAX_MASKED_ROWS, MAX_DENSE_ROWS)
            lib.packed_kernels_init()
            _library = lib
        except (OSError, subprocess.SubprocessError, AttributeError) as err:
            reason = f"cannot build them ({err})"
    if reason:
        warnings.warn(f"packed layers run on the pure-PyTorch tile path, slower than the native kernels: {reason}",
                      RuntimeWarning, stacklevel=3)
    return _library


def _blas_sgemm() -> int | None:
    """The address of the BLAS sgemm torch links (MKL on x86 wheels), for the decoding step's
    large products; None where torch's library does not export one."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))  # already loaded: its handle
        return ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def has_blas() -> bool:
    """Whether the loaded kernels can hand large products to BLAS (see ``_blas_sgemm``)."""
    return library() is not None and _sgemm is not None


_generation = 0  # moves on each reset(): kernels bound to a layer before it are bound again (read per call)


def reset() -> None:
    """Forget the loaded library (tests switch paths with this)."""
    global _library, _tried, _generation, _sgemm
    _library, _tried, _sgemm = None, False, None
    _generation += 1
    _threaded.cache_clear()


@functools.lru_cache(maxsize=None)
def _threaded() -> bool:
    """Whether the kernels split their rows across OpenMP threads themselves."""
    return bool(library().packed_kernels_threaded())


DEQUANT_BITS = (1, 4, 8)


def dequantize(index: Tensor, bits: int, start: int, table: Tensor, out: Tensor) -> bool:
    """Fill ``out`` with the centroid values of b-bit indices start..start + out.numel() (``table``
    padded to 2**bits entries); False, untouched, where no kernel serves it."""
    lib = library()
    if lib is None or bits not in DEQUANT_BITS:
        return False
    lib.lut_dequant(index.data_ptr(), bits, start, out.numel(), table.data_ptr(), out.data_ptr())
    return True


def dequantize_masked(bits: int, cols: int, index: Tensor | None, values: Tensor | None, codebook: Tensor | None,
                      mask: Tensor, row_start: Tensor, r0: int, out: Tensor) -> bool:
    """Fill ``out`` (rows r0.. of a pruned layer, K columns, K a multiple of 8) with fp32 survivors
    (``values``) or b-bit indices into ``codebook`` (b <= 4, padded to 16), zeros elsewhere;
    False, untouched, where no kernel serves it."""
    lib = library()
    kind = LAYER_KINDS.get(("sparse" if values is not None else "codebook", bits, True))
    if lib is None or kind is None or cols % 8:
        return False
    layer = _Layer(kind, False, out.shape[0], cols, bits, *_pointers(index, values, codebook, mask, row_start))
    lib.masked_dequant(ctypes.addressof(layer), r0, r0 + out.shape[0], out.data_ptr())
    return True


class _Layer(ctypes.Structure):
    """``packed_layer`` in csrc/packed_kernels.c."""
    _fields_ = [("kind", ctypes.c_int64), ("wide", ctypes.c_int64), ("rows", ctypes.c_int64), ("cols", ctypes.c_int64),
                ("bits", ctypes.c_int64), ("index", ctypes.c_void_p), ("values", ctypes.c_void_p),
                ("codebook", ctypes.c_void_p), ("mask", ctypes.c_void_p), ("row_start", ctypes.c_void_p)]


# (encoding, bits, pruned) -> LAYER_* in csrc/packed_kernels.c
LAYER_KINDS = {("codebook", 4, False): 0, ("codebook", 1, False): 1, ("sparse", 32, True): 2,
               **{("codebook", b, True): 3 for b in (1, 2, 3, 4)}}
LAYER_DENSE = 4


def _pointers(*tensors: Tensor | None) -> list[int | None]:
    return [None if t is None else t.data_ptr() for t in tensors]


def layer_descriptor(encoding: str, bits: int, rows: int, cols: int, *, index: Tensor | None = None,
                     codebook: Tensor | None = None, values: Tensor | None = None, mask: Tensor | None = None,
                     row_start: Tensor | None = None, r0: int = 0, r1: int | None = None) -> _Layer | None:
    """The C descriptor of a layer's rows r0..r1 (all by default), or None where no kernel serves
    it: a dense layer's indices from row r0 on; a pruned layer's row offsets and mask from row r0
    (the survivors' offsets are absolute). It holds addresses only: the caller keeps the tensors."""
    kind = LAYER_KINDS.get((encoding, bits, mask is not None))
    if kind is None or cols % 8:
        return None
    r1 = rows if r1 is None else r1
    pointers = _pointers(index, values, codebook, mask, row_start)
    if mask is None:
        pointers[0] += r0 * cols * bits // 8
    else:
        pointers[3] += r0 * cols // 8
        pointers[4] += r0 * row_start.element_size()
    return _Layer(kind, _wide(), r1 - r0, cols, bits, *pointers)


def dense_descriptor(weight: Tensor) -> _Layer | None:
    """The C descriptor of an uncompressed fp32 weight (rows, cols), contiguous; None where the
    kernel cannot take it."""
    if weight.dtype != torch.float32 or not weight.is_contiguous() or weight.device.type != "cpu" \
            or weight.shape[1] % 8:
        return None
    return _Layer(LAYER_DENSE, 0, weight.shape[0], weight.shape[1], 32, None, weight.data_ptr(), None, None, None)


def bind(encoding: str, bits: int, rows: int, cols: int, *, index: Tensor | None = None, codebook: Tensor | None = None,
         values: Tensor | None = None, mask: Tensor | None = None, row_start: Tensor | None = None
         ) -> Callable[[Tensor, Tensor | None], Tensor] | None:
    """One layer's kernel, its tensors' addresses set once: ``call(x, bias)`` for a contiguous fp32
    x (..., cols) of at most ``call.max_rows`` rows, or None where no kernel serves the layer.
    Decoding calls each layer once per step, and what is decided here is not decided per call.
    The closure holds the tensors, so the addresses stay valid while it lives; a layer whose
    buffers are replaced binds again."""
    lib = library()
    if lib is None or layer_descriptor(encoding, bits, rows, cols, index=index, codebook=codebook, values=values,
                                       mask=mask, row_start=row_start) is None:
        return None
    held = [t for t in (index, codebook, values, mask, row_start) if t is not None]
    fn = lib.packed_layer_matmul_t

    def descriptor(r0: int, r1: int) -> _Layer:
        return layer_descriptor(encoding, bits, rows, cols, index=index, codebook=codebook, values=values,
                                mask=mask, row_start=row_start, r0=r0, r1=r1)

    if rows * cols >= PARALLEL_FROM and not _threaded():  # no OpenMP: a thread pool splits the rows
        threads = max(1, torch.get_num_threads())
        bounds = [rows * i // threads for i in range(threads + 1)]
        parts = [(r0, r1, descriptor(r0, r1)) for r0, r1 in zip(bounds, bounds[1:]) if r1 > r0]

        def call(x: Tensor, bias: Tensor | None) -> Tensor:
            m = x.numel() // cols
            pieces = [torch.empty(m, r1 - r0) for r0, r1, _ in parts]

            def run(part: tuple[int, int, _Layer], out: Tensor) -> None:  # ctypes releases the GIL
                r0, _, layer = part
                fn(ctypes.addressof(layer), x.data_ptr(), m, None if bias is None else bias.data_ptr() + 4 * r0,
                   out.data_ptr())
            list(_thread_pool(threads).map(run, parts, pieces))
            return torch.cat(pieces, dim=1).view(*x.shape[:-1], rows)
    else:
        layer = descriptor(0, rows)
        address = ctypes.addressof(layer)

        def call(x: Tensor, bias: Tensor | None) -> Tensor:
            out = torch.empty(*x.shape[:-1], rows)
            fn(address, x.data_ptr(), x.numel() // cols, None if bias is None else bias.data_ptr(), out.data_ptr())
            return out
        held.append(layer)

    max_rows = MAX_MASKED_ROWS if mask is not None else MAX_1BIT_ROWS if bits == 1 else MAX_ROWS
    call.max_rows = max_rows  # type: ignore[attr-defined]
    call.held = held  # type: ignore[attr-defined]
    return call


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shrinkformer-kernel")
    return _pools[threads]
