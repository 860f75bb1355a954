"""Compiling the runtime's native library: run by ``pip install`` (``setup.py``'s build step), so a
user never needs a compiler at run time, and by the loader only where the sources changed after
the install (an editable checkout being worked on).

Two variants from one set of sources (``csrc/``):
- ``x86``: the AVX2/FMA/F16C kernels (``packed_kernels.c``; AVX-512 ones inside, chosen per CPU at run
  time), for x86-64 CPUs that have AVX2 and FMA;
- ``portable``: the same entry points in plain C (``packed_portable.c``), for every other CPU and
  architecture (on aarch64 its 4-bit decoding uses NEON's table lookup, the rest the compiler's
  vectorizer); CI forces it once, and runs the aarch64 build under qemu (tests/test_aarch64.py).

Standard library only: ``setup.py`` imports this file before anything is installed. The runtime
imports it on every start (``native.py`` checks an editable checkout's library against its
sources), so what only a build needs is imported by the build: a translating process stays small.
"""

from __future__ import annotations

import os
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"
# both variants: the step, the encoder, the search, the tokenizer, a file's layers in the kernels' layout,
# the int8 mode
SHARED = ("decoder_step.c", "beam_select.c", "search.c", "tokenizer.c", "prepare.c", "int8.c", "grouped.c")
VARIANTS = {
    "x86": (("packed_kernels.c", *SHARED), ("-mavx2", "-mfma", "-mf16c")),
    "portable": (("packed_portable.c", *SHARED), ()),
}
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11")
OPENMP_FLAG = "-fopenmp"


def sha256(data: bytes = b""):
    """A SHA-256 object from Python's own implementation where it has one: hashlib's is OpenSSL's,
    and loading libcrypto costs 3.8 MB resident, a sixth of the runtime's batch-1 process (the
    checksum of a 4 MB file takes 13 ms instead of 4)."""
    try:
        from _sha2 import sha256 as own  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as own  # Python <= 3.11
        except ImportError:
            from hashlib import sha256 as own
    return own(data)


def source_hash() -> str:
    """What the library is built from: every C source and header, by name and content."""
    h = sha256()
    for f in sorted(p for p in CSRC.iterdir() if p.suffix in (".c", ".h") and not p.name.startswith(".")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def machine_variants(machine: str | None = None) -> list[str]:
    """The variants worth building on this architecture."""
    if machine is None:  # platform.machine() is uname's where there is one
        machine = os.uname().machine if hasattr(os, "uname") else _machine()
    machine = machine.lower()
    return ["x86", "portable"] if machine in ("x86_64", "amd64") else ["portable"]


def _machine() -> str:
    import platform
    return platform.machine()


def compiler() -> str | None:
    import shutil
    cc = os.environ.get("CC", "cc")
    return cc if shutil.which(cc) else None


def build(variant: str, target: Path, cc: str | None = None, openmp: bool = True) -> Path:
    """Compile ``variant`` into ``target`` (atomically: a concurrent build or a reader never sees
    half a library); with OpenMP where the compiler has it, else single-threaded. Raises OSError
    with the compiler's last line when it fails."""
    import subprocess
    import tempfile
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
