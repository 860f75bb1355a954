"""Loading the runtime's native library (``csrc/``: the layer kernels, the decoding step, the
encoder, the beam selection) with ctypes; no torch.

The library is compiled when the package is installed (``build.py``, run by ``setup.py``) into
``runtime/_lib/``. Which variant runs: ``x86`` where the CPU has AVX2, FMA and F16C, else ``portable``;
``SHRINKFORMER_NATIVE=portable`` forces the portable one, ``=avx2`` the x86 one without its
AVX-512 kernels, ``=0`` none. Without a library (no compiler at install, or ``=0``) the runtime
decodes in numpy (``reference.py``), after one warning. An editable checkout whose C sources
changed since the install rebuilds into ``~/.cache/shrinkformer/kernels`` (or
``$SHRINKFORMER_CACHE/kernels``) where a compiler is there.

Large products (many rows of x) go through a BLAS sgemm on dequantized tiles: the one numpy
ships (its bundled OpenBLAS, made single-threaded: the library splits tiles across its own OpenMP
threads). It is loaded on the first search that has such products (``need_blas``), not at start:
OpenBLAS costs 10 MB resident, and translating one sentence at a time never reaches it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from pathlib import Path

from . import build, contract

LIB_DIR = Path(__file__).parent / "_lib"
# Above this many rows of x a dequantized tile and BLAS win (benchmarks/kernels.py at base-preset
# shapes, AVX2, 2 threads: the crossover lies between 12 and 24 rows for codebook layers and
# between 8 and 12 for pruned ones).
MAX_ROWS = 16
MAX_MASKED_ROWS = 8
MAX_1BIT_ROWS = 64  # the 1-bit kernel's tables serve 8 rows of x per pass at a fraction of fp32's cost
MAX_DENSE_ROWS = 8  # the fp32 kernel (a decoding step's uncompressed layers): one pass over W for 8 rows
# Encoder positions (rows of x) up to which a search needs no BLAS: at batch 1 (test_2016_flickr's
# sentences, 10 to 40 positions) the kernels encode as fast as dequantized tiles through OpenBLAS or
# faster (2 threads, ms a sentence without / with: 4-bit 9.4-9.9 / 9.7-10.1, mixed-20x 10.4-10.7 /
# 10.9-11.0), and the process stays 2-6 MB smaller.
ENCODER_KERNEL_ROWS = 64

_state: dict[str, object] = {}  # "lib", "blas", "tried"
generation = 0  # moves on each reset(): descriptors built before it are built again


def _cache_dir() -> Path:
    root = os.environ.get("SHRINKFORMER_CACHE", Path.home() / ".cache" / "shrinkformer")
    return Path(root) / "kernels"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.split(":", 1)[-1].split())


def requested() -> str:
    """``SHRINKFORMER_NATIVE``: "1" (default: the best variant here), "portable", "avx2" or "0"."""
    return os.environ.get("SHRINKFORMER_NATIVE", "1")


def variant() -> str | None:
    """The variant this process runs, or None (no native library wanted)."""
    want = requested()
    if want == "0":
        return None
    if want == "portable" or "x86" not in build.machine_variants() or not {"avx2", "fma", "f16c"} <= cpu_flags():
        return "portable"
    return "x86"


def wide() -> bool:
    """Whether the AVX-512 kernels run (the x86 variant, the CPU has them, not SHRINKFORMER_NATIVE=avx2)."""
    return variant() == "x86" and {"avx512f", "avx512bw"} <= cpu_flags() and requested() != "avx2"


def vnni() -> bool:
    """Whether the int8 mode's AVX-512 VNNI core runs (else its portable core: the same results)."""
    return wide() and "avx512_vnni" in cpu_flags()


def grouped() -> bool:
    """Whether layers of at most 5 distinct values run through csrc/grouped.c's tables: where the
    AVX-512 kernels run (its permute is the lookup), unless ``SHRINKFORMER_GROUPED=0``."""
    return wide() and os.environ.get("SHRINKFORMER_GROUPED", "1") != "0"


def group(layer) -> None:
    """Give a prepared 4-bit ``contract.Layer`` (kernels' kind LAYER_LUT4) grouped.c's layout where
    it has few enough values and ``grouped()``; the layout is the library's (``layer_release`` or
    ``layer_release_grouped`` frees it)."""
    if not grouped() or layer.kind != 0 or layer.gindex:
        return
    if library().layer_to_grouped(ctypes.byref(layer)) == -2:
        raise MemoryError(f"a {layer.rows}x{layer.cols} layer's lookup layout: out of memory")


def _locate(name: str) -> Path | None:
    """The library file to load: the installed one where it matches the sources beside it, else a
    build in the cache (made now where a compiler is there), else the installed one as it is."""
    installed = LIB_DIR / build.library_name(name)
    current = build.source_hash() if build.CSRC.is_dir() else None
    if installed.exists() and (current is None or _hash_of(installed) == current):
        return installed
    cached = _cache_dir() / f"libshrinkformer-{name}-{current}.so"
    if current is not None and cached.exists():
        return cached
    if current is not None and build.compiler():
        import logging  # only here: a translating process need not import it
        log = logging.getLogger(__name__)
        log.info("building the native runtime (%s): its C sources changed since the install", name)
        try:
            return build.build(name, cached)
        except OSError as err:
            log.warning("cannot rebuild the native runtime: %s", err)
    return installed if installed.exists() else None


def _hash_of(path: Path) -> str | None:
    try:
        lib = ctypes.CDLL(str(path))
        lib.shrinkformer_source_hash.restype = ctypes.c_char_p
        return lib.shrinkformer_source_hash().decode()
    except (OSError, AttributeError):
        return None


def library() -> ctypes.CDLL | None:
    """The loaded library, or None (with one warning) where none can run here."""
    if _state.get("tried"):
        return _state.get("lib")  # type: ignore[return-value]
    _state["tried"] = True
    name, reason = variant(), None
    if name is None:
        reason = "SHRINKFORMER_NATIVE=0"
    else:
        path = _locate(name)
        if path is None:
            reason = "no native library was built at install (no C compiler?)"
        else:
            try:
                lib = ctypes.CDLL(str(path))
                contract.declare(lib)
                contract.check_layout(lib)
                lib.decoder_step_configure(None, 0, MAX_ROWS, MAX_1BIT_ROWS, MAX_MASKED_ROWS, MAX_DENSE_ROWS)
                lib.packed_kernels_init()
                _state["lib"] = lib
            except (OSError, AttributeError) as err:
                reason = f"cannot load it ({err})"
    if reason:
        warnings.warn(f"shrinkformer runs without its native library ({reason}): numpy and PyTorch code instead, "
                      f"slower", RuntimeWarning, stacklevel=3)
    return _state.get("lib")  # type: ignore[return-value]


def need_blas(decoder_rows: int, encoder_rows: int) -> None:
    """Before a search: BLAS where its products outgrow the kernels (more beams x sentences than
    MAX_ROWS, or more source positions than ENCODER_KERNEL_ROWS)."""
    if decoder_rows > MAX_ROWS or encoder_rows > ENCODER_KERNEL_ROWS:
        load_blas()


def load_blas() -> None:
    """Give the library its sgemm (once; it stays)."""
    lib = library()
    if "blas" in _state or lib is None:
        return
    blas, ilp64 = blas_sgemm()
    _state["blas"] = blas
    if blas is not None:
        lib.decoder_step_configure(blas, ilp64, MAX_ROWS, MAX_1BIT_ROWS, MAX_MASKED_ROWS, MAX_DENSE_ROWS)


# (symbol, 64-bit integers): numpy >= 2's scipy-openblas, older numpy's openblas64_, a plain BLAS
_SGEMM_SYMBOLS = (("scipy_sgemm_64_", 1), ("sgemm_64_", 1), ("scipy_sgemm_", 0), ("sgemm_", 0))
_THREADS_SYMBOLS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads")


def blas_sgemm() -> tuple[int | None, int]:
    """The address of a BLAS sgemm and whether it takes 64-bit integers: torch's (MKL, in the
    OpenMP pool the kernels use) where torch is already loaded, else the one in numpy's bundled
    OpenBLAS, made single-threaded; (None, 0) where there is none (then every product runs in the
    kernels)."""
    import importlib.util
    import sys

    if "torch" in sys.modules:  # loaded by the caller; the runtime never imports it
        try:
            torch_cpu = ctypes.CDLL(str(Path(sys.modules["torch"].__file__).parent / "lib" / "libtorch_cpu.so"))
            return ctypes.cast(torch_cpu.sgemm_, ctypes.c_void_p).value, 0
        except (OSError, AttributeError):
            pass

    spec = importlib.util.find_spec("numpy")  # found, not imported: the runtime may run without numpy
    if spec is None or spec.origin is None:
        return None, 0
    root = Path(spec.origin).parent
    candidates = [str(d / f) for d in (root.parent / "numpy.libs", root / ".libs", root / ".dylibs") if d.is_dir()
                  for f in sorted(os.listdir(d)) if "openblas" in f]
    for path in candidates:
        try:
            blas = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, ilp64 in _SGEMM_SYMBOLS:
            if hasattr(blas, symbol):
                for threads in _THREADS_SYMBOLS:
                    if hasattr(blas, threads):
                        getattr(blas, threads).argtypes = [ctypes.c_int]
                        getattr(blas, threads)(1)
                        break
                return ctypes.cast(getattr(blas, symbol), ctypes.c_void_p).value, ilp64
    return None, 0


def has_blas() -> bool:
    """Whether large products run through BLAS here (loading it, as a large search would)."""
    load_blas()
    return library() is not None and _state.get("blas") is not None


def loaded_variant() -> str | None:
    lib = library()
    return None if lib is None else lib.shrinkformer_variant().decode()


def set_threads(n: int) -> None:
    """Threads the native library uses (OpenMP's; with torch loaded, torch's own pool)."""
    lib = library()
    if lib is not None and n > 0:
        lib.shrinkformer_set_threads(n)


def reset() -> None:
    """Forget the loaded library (tests switch variants with this)."""
    global generation
    _state.clear()
    generation += 1
