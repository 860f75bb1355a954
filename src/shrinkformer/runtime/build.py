"""Compiling the runtime's native library: run by ``pip install`` (``setup.py``'s build step), so a
user never needs a compiler at run time, and by the loader only where the sources changed after
the install (an editable checkout being worked on).

Two variants from one set of sources (``csrc/``):
- ``x86``: the AVX2/FMA kernels (``packed_kernels.c``; AVX-512 ones inside, chosen per CPU at run
  time), for x86-64 CPUs that have AVX2 and FMA;
- ``portable``: the same entry points in plain C (``packed_portable.c``), for every other CPU and
  architecture (on aarch64 its 4-bit decoding uses NEON's table lookup, the rest the compiler's
  vectorizer); CI forces it once, and runs the aarch64 build under qemu (tests/test_aarch64.py).

Standard library only: ``setup.py`` imports this file before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"
# both variants: the step, the encoder, the search, the tokenizer, a file's layers in the kernels' layout
SHARED = ("decoder_step.c", "beam_select.c", "search.c", "tokenizer.c", "prepare.c")
VARIANTS = {
    "x86": (("packed_kernels.c", *SHARED), ("-mavx2", "-mfma")),
    "portable": (("packed_portable.c", *SHARED), ()),
}
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11")
OPENMP_FLAG = "-fopenmp"


def source_hash() -> str:
    """What the library is built from: every C source and header, by name and content."""
    h = hashlib.sha256()
    for f in sorted(CSRC.glob("*.[ch]")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def machine_variants(machine: str | None = None) -> list[str]:
    """The variants worth building on this architecture."""
    machine = (machine or platform.machine()).lower()
    return ["x86", "portable"] if machine in ("x86_64", "amd64") else ["portable"]


def compiler() -> str | None:
    cc = os.environ.get("CC", "cc")
    return cc if shutil.which(cc) else None


def build(variant: str, target: Path, cc: str | None = None, openmp: bool = True) -> Path:
    """Compile ``variant`` into ``target`` (atomically: a concurrent build or a reader never sees
    half a library); with OpenMP where the compiler has it, else single-threaded. Raises OSError
    with the compiler's last line when it fails."""
    cc = cc or compiler()
    if cc is None:
        raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
    sources, extra = VARIANTS[variant]
    defines = [f'-DSHRINKFORMER_SOURCE_HASH="{source_hash()}"', f'-DSHRINKFORMER_VARIANT="{variant}"']
    base = [cc, *FLAGS, *extra, *defines, f"-I{CSRC}", *(str(CSRC / s) for s in sources)]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        errors = []
        for flags in ([OPENMP_FLAG], []) if openmp else ([],):
            result = subprocess.run([*base, *flags, "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else str(result.returncode))
        raise OSError(f"{cc} failed: {errors[-1]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library_name(variant: str) -> str:
    return f"libshrinkformer-{variant}.so"
