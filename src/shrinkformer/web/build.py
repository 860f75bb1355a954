"""Compiling the runtime's C sources (``runtime/csrc``) to the page's WebAssembly module, with
emscripten (Debian: ``emscripten``): the portable kernels with their SIMD128 paths, the decoding
step, the search and the tokenizer, as a standalone module whose only import is a memory-growth
notice. The package ships it prebuilt (``static/shrinkformer.wasm``, built from the sources whose
hash it carries), so a page never needs a compiler; ``shrinkformer web-demo`` rebuilds it where the
sources changed and emcc is there."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..runtime import build as runtime_build

STATIC = Path(__file__).parent / "static"
PREBUILT = STATIC / "shrinkformer.wasm"
SOURCES = ("packed_portable.c", *runtime_build.SHARED)
EXPORTS = ("beam_search", "sinusoid_table", "layer_prepare", "half_to_float", "spm_load", "spm_error", "spm_free", "spm_encode", "spm_decode",
           "spm_size", "shrinkformer_layout", "shrinkformer_source_hash", "malloc", "free")
FLAGS = ("-O3", "-std=c11", "-msimd128", "--no-entry", "-sSTANDALONE_WASM", "-sALLOW_MEMORY_GROWTH=1")
# Debian's emcc runs its JavaScript optimizer with Node, which needs acorn (.ci/run installs it here)
NODE_MODULES = Path.home() / ".cache" / "shrinkformer" / "node" / "node_modules"


def emcc() -> str | None:
    return shutil.which(os.environ.get("EMCC", "emcc"))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    if NODE_MODULES.is_dir():
        env["NODE_PATH"] = os.pathsep.join(p for p in (str(NODE_MODULES), env.get("NODE_PATH", "")) if p)
    return env


def is_current(wasm: Path = PREBUILT) -> bool:
    """Whether the module was built from the C sources beside it (it carries their hash)."""
    return wasm.is_file() and runtime_build.source_hash().encode() in wasm.read_bytes()


def build(target: Path = PREBUILT, extra: tuple[str, ...] = ()) -> Path:
    """Compile the module into ``target`` (atomically); raises OSError with emcc's last line."""
    compiler = emcc()
    if compiler is None:
        raise OSError("no emcc on PATH (Debian: apt install emscripten)")
    csrc = runtime_build.CSRC
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".wasm")
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, *extra, f"-I{csrc}", f'-DSHRINKFORMER_SOURCE_HASH="{runtime_build.source_hash()}"',
               '-DSHRINKFORMER_VARIANT="wasm"', *(str(csrc / s) for s in SOURCES),
               f"-sEXPORTED_FUNCTIONS={','.join('_' + n for n in EXPORTS)}", "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=600)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise OSError(f"emcc failed: {lines[-1] if lines else result.returncode}")
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def module() -> Path:
    """A module built from the current sources: the shipped one, or one rebuilt into the cache."""
    if is_current():
        return PREBUILT
    cache = Path(os.environ.get("SHRINKFORMER_CACHE", Path.home() / ".cache" / "shrinkformer")) / "wasm"
    cached = cache / f"shrinkformer-{runtime_build.source_hash()}.wasm"
    if cached.is_file():
        return cached
    if emcc() is None:
        raise OSError(f"{PREBUILT} was built from other C sources than these, and there is no emcc to rebuild it "
                      f"(Debian: apt install emscripten)")
    return build(cached)


if __name__ == "__main__":  # python -m shrinkformer.web.build: refresh the shipped module
    print(build())
