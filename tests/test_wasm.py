"""The runtime compiled to WebAssembly (the portable C, with SIMD128 for the compiler to use):
the library links as a wasm module exporting every entry point the Python side binds, and its
kernels, run under Node, compute what the portable build here computes, bit for bit. Skipped where
emcc or node is missing (Debian: emscripten, nodejs; `.ci/run` installs them). The page's own
tests (translations, files, the page in Chromium) are tests/test_web.py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shrinkformer.runtime import build
from shrinkformer.web import build as web_build
from tests.kernel_cases import check_against_host, compile_driver

ROOT = Path(__file__).resolve().parents[1]
EMCC, NODE = web_build.emcc(), shutil.which("node")
WASM_FLAGS = ["-msimd128", "-sALLOW_MEMORY_GROWTH=1"]
pytestmark = pytest.mark.skipif(EMCC is None or NODE is None, reason="no emcc or node here")


def test_the_page_module_builds_from_these_sources_with_its_entry_points(tmp_path):
    wasm = web_build.build(tmp_path / "rt.wasm")
    listing = subprocess.run([NODE, "-e", "const m = new WebAssembly.Module(require('fs').readFileSync(process.argv[1]));"
                              "console.log(JSON.stringify([WebAssembly.Module.exports(m).map(e => e.name),"
                              "WebAssembly.Module.imports(m).map(e => e.name)]))",
                              str(wasm)], check=True, capture_output=True, text=True).stdout
    exports, imports = json.loads(listing)
    assert set(web_build.EXPORTS) <= set(exports)
    assert imports == ["emscripten_notify_memory_growth"]  # a standalone module: no emscripten JavaScript
    assert wasm.stat().st_size < 1 << 20  # the page's budget is 1 MB without the model
    assert web_build.is_current(wasm)


def test_the_wasm_fused_multiply_add_rounds_once_as_an_fma_does(tmp_path):
    """WebAssembly has no FMA: runtime.h's fused_madd emulates it (exact product, a halfway
    check, TwoSum); on halfway sums, a hair off them, near subnormals and 200k random triples it
    gives the host's fmaf bits."""
    driver = ROOT / "tests" / "native" / "fma_check.c"
    subprocess.run(["cc", "-O2", "-std=c11", f"-I{build.CSRC}", str(driver), "-o", str(tmp_path / "host"), "-lm"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([EMCC, "-O3", "-std=c11", *WASM_FLAGS, f"-I{build.CSRC}", str(driver), "-sNODERAWFS=1",
                    "-sENVIRONMENT=node", "-o", str(tmp_path / "fma.js")], check=True, capture_output=True,
                   env=web_build.environment(), timeout=300)
    subprocess.run([str(tmp_path / "host"), str(tmp_path / "host.bin")], check=True, timeout=60)
    subprocess.run([NODE, "--no-experimental-fetch", str(tmp_path / "fma.js"), str(tmp_path / "wasm.bin")], check=True,
                   timeout=120)
    host, wasm = (tmp_path / "host.bin").read_bytes(), (tmp_path / "wasm.bin").read_bytes()
    assert len(host) > 800_000 and host == wasm


def test_wasm_kernels_compute_what_the_portable_kernels_compute_here(tmp_path):
    js = compile_driver(EMCC, tmp_path / "check.js", [*WASM_FLAGS, "-sNODERAWFS=1", "-sENVIRONMENT=node"], env=web_build.environment())
    # Node 20's global fetch() makes this emscripten's loader fetch the .wasm as a URL; read it as a file
    check_against_host(tmp_path, [NODE, "--no-experimental-fetch", str(js)], "wasm")
