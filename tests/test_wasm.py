"""The runtime compiled to WebAssembly (the portable C, with SIMD128 for the compiler to use):
the library links as a wasm module exporting every entry point the Python side binds, and its
kernels, run under Node, compute what the portable build here computes, bit for bit. Skipped where
emcc or node is missing (Debian: emscripten, nodejs; `.ci/run` installs them). The page and the
in-browser search are issue "Translate in the browser"; this is their ground."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shrinkformer.runtime import build, contract
from tests.kernel_cases import check_against_host, compile_driver

EMCC, NODE = shutil.which("emcc"), shutil.which("node")
# Debian's emscripten runs its JS optimizer with Node and needs acorn; .ci/run puts it here
# (npm install acorn) where the system's Node does not have it.
NODE_MODULES = Path.home() / ".cache" / "shrinkformer" / "node" / "node_modules"
WASM_FLAGS = ["-msimd128", "-sALLOW_MEMORY_GROWTH=1"]
pytestmark = pytest.mark.skipif(EMCC is None or NODE is None, reason="no emcc or node here")


def emcc_env() -> dict:
    env = dict(os.environ)
    if NODE_MODULES.is_dir():
        env["NODE_PATH"] = f"{NODE_MODULES}{os.pathsep}{env.get('NODE_PATH', '')}"
    return env


def test_the_runtime_links_as_a_wasm_module_with_every_entry_point(tmp_path):
    names = sorted(contract.FUNCTIONS)
    sources = [str(build.CSRC / s) for s in build.VARIANTS["portable"][0]]
    subprocess.run([EMCC, "-O3", "-std=c11", *WASM_FLAGS, f"-I{build.CSRC}", '-DSHRINKFORMER_SOURCE_HASH="wasm"',
                    '-DSHRINKFORMER_VARIANT="wasm"', *sources, "--no-entry",
                    f"-sEXPORTED_FUNCTIONS={','.join('_' + n for n in names)}", "-o", str(tmp_path / "rt.wasm")],
                   check=True, capture_output=True, env=emcc_env(), timeout=300)
    listing = subprocess.run([NODE, "-e", "const m = new WebAssembly.Module(require('fs').readFileSync(process.argv[1]));"
                              "console.log(WebAssembly.Module.exports(m).map(e => e.name).join(' '))",
                              str(tmp_path / "rt.wasm")], check=True, capture_output=True, text=True).stdout.split()
    assert set(names) <= set(listing)
    assert (tmp_path / "rt.wasm").stat().st_size < 1 << 20  # the page's budget is 1 MB without the model


def test_wasm_kernels_compute_what_the_portable_kernels_compute_here(tmp_path):
    js = compile_driver(EMCC, tmp_path / "check.js", [*WASM_FLAGS, "-sNODERAWFS=1", "-sENVIRONMENT=node"], env=emcc_env())
    # Node 20's global fetch() makes this emscripten's loader fetch the .wasm as a URL; read it as a file
    check_against_host(tmp_path, [NODE, "--no-experimental-fetch", str(js)], "wasm")
