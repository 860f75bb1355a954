"""The page (``shrinkformer web-demo``) and its runtime under Node: the shipped WebAssembly module
is the current sources', it translates the first 100 test_2016_flickr sentences with mixed-20x.sfz
exactly as the native runtime does at batch 1, bad files get one line, and web-demo writes a
page under 1 MB besides the model. In headless Chromium (where Debian's chromium and npm's
puppeteer-core are here; benchmarks/browser.py installs the latter and measures the page) the page translates as Node does."""

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shrinkformer.cli import main
from shrinkformer.runtime import native, sfz
from shrinkformer.runtime.translator import Translator
from shrinkformer.web import build, demo
from shrinkformer.web.serve import serve

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "results" / "multi30k" / "models"
DATA = ROOT.parent / "shared" / "data" / "multi30k"
NODE = shutil.which("node")
RUNNER = build.STATIC / demo.NODE_RUNNER
needs_node = pytest.mark.skipif(NODE is None, reason="no node here")


def node_translate(model: Path, lines: list[str]) -> tuple[list[str], dict]:
    result = subprocess.run([NODE, str(RUNNER), str(model), str(build.PREBUILT)], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, timeout=600, check=True)
    return result.stdout.splitlines(), json.loads(result.stderr.strip().splitlines()[-1])


def test_the_shipped_module_is_built_from_these_sources():
    """A change to runtime/csrc needs `python -m shrinkformer.web.build` and the new module committed."""
    assert build.is_current(), "rebuild the page's module: python -m shrinkformer.web.build"


@needs_node
@pytest.mark.skipif(native.library() is None, reason="no native library here")
def test_node_translates_100_test_sentences_as_the_native_runtime_at_batch_1():
    if not (DATA / "test_2016_flickr.en.gz").is_file():
        pytest.skip(f"no Multi30k under {DATA}")
    lines = [line.rstrip("\n") for line, _ in zip(gzip.open(DATA / "test_2016_flickr.en.gz", "rt", encoding="utf-8"),
                                                    range(100))]
    model = MODELS / "mixed-20x.sfz"
    ours, timing = node_translate(model, lines)
    assert ours == Translator.load(model, batch_sentences=1).translate(lines)
    assert timing["lines"] == 100 and timing["words"] > 500


@needs_node
def test_the_node_runtime_keeps_empty_lines_and_other_models(tmp_path):
    lines = ["A dog runs.", "", "   ", "Two men play chess in a park."]
    model = MODELS / "kmeans-4bit-all+embeddings.sfz"
    ours, _ = node_translate(model, lines)
    assert ours[1:3] == ["", ""]
    if native.library() is not None:
        assert ours == Translator.load(model, batch_sentences=1).translate(lines)


def damaged(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = (MODELS / "mixed-20x.sfz").read_bytes()
    files = {}

    def write(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    files["truncated"] = (write("truncated.sfz", good[:5]), "truncated packed file")
    files["cut"] = (write("cut.sfz", good[:4000]), "truncated or corrupt packed file")
    flipped = bytearray(good)
    flipped[-100] ^= 0xFF
    files["flipped"] = (write("flipped.sfz", bytes(flipped)), "checksum mismatch")
    header = json.dumps({"__metadata__": {"format": "something-else"}}).encode()
    files["foreign"] = (write("foreign.sfz", len(header).to_bytes(8, "little") + header), "not a shrinkformer packed file")
    meta = {"format": sfz.FORMAT, "version": str(sfz.VERSION), "huggingface": json.dumps({"architectures": ["MarianMTModel"]})}
    meta["sha256"] = sfz.digest(meta, {})
    header = json.dumps({"__metadata__": meta}).encode()
    files["other family"] = (write("marian.sfz", len(header).to_bytes(8, "little") + header), "MarianMTModel runs only")
    return files


@needs_node
def test_bad_files_get_one_line_and_exit_1(tmp_path):
    for name, (path, message) in damaged(tmp_path).items():
        result = subprocess.run([NODE, str(RUNNER), str(path), str(build.PREBUILT)], input="A dog.\n",
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, name
        assert result.stderr.count("\n") == 1 and message in result.stderr and result.stdout == "", (name, result.stderr)


def test_web_demo_writes_the_page_beside_the_model(tmp_path, capsys):
    out = tmp_path / "page"
    assert main(["web-demo", str(MODELS / "mixed-20x.sfz"), "-o", str(out)]) == 0
    assert (out / "model.sfz").read_bytes() == (MODELS / "mixed-20x.sfz").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted([*demo.PAGE, "shrinkformer.wasm", demo.NODE_RUNNER, "model.sfz"])
    page = sum((out / name).stat().st_size for name in (*demo.PAGE, "shrinkformer.wasm"))
    assert page < 1 << 20
    assert "http.server" in capsys.readouterr().out
    # an existing directory is kept unless told; a bad model writes nothing
    assert main(["web-demo", str(MODELS / "mixed-20x.sfz"), "-o", str(out)]) == 2
    for name, (path, message) in damaged(tmp_path).items():
        target = tmp_path / f"out-{name.replace(' ', '-')}"
        assert main(["web-demo", str(path), "-o", str(target)]) != 0, name
        assert not target.exists() and not any(p.name.startswith(f".{target.name}") for p in tmp_path.iterdir())
    assert main(["web-demo", str(MODELS / "kmeans-4bit-all+embeddings.sfz"), "-o", str(out), "--force"]) == 0
    assert (out / "model.sfz").stat().st_size == (MODELS / "kmeans-4bit-all+embeddings.sfz").stat().st_size


def puppeteer() -> Path | None:
    modules = build.NODE_MODULES
    return modules if (modules / "puppeteer-core").is_dir() and shutil.which("chromium") else None


@needs_node
@pytest.mark.skipif(puppeteer() is None, reason="no chromium or puppeteer-core here (benchmarks/browser.py sets it up)")
def test_the_page_translates_in_headless_chromium_as_node_does(tmp_path):
    out = demo.write(MODELS / "mixed-20x.sfz", tmp_path / "page")
    lines = ["A man in an orange hat starring at something.", "Two dogs play in the snow.", "A girl climbs a tree."]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    with serve(out) as url:
        result = subprocess.run([NODE, str(ROOT / "benchmarks" / "browser_driver.cjs"), url, str(tmp_path / "lines.txt"),
                                 str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=300,
                                env={**build.environment(), "NODE_PATH": str(puppeteer())}, check=True)
    run = json.loads(result.stdout)
    assert run["lines"] == node_translate(MODELS / "mixed-20x.sfz", lines)[0]
    assert run["typed"]["target"] == run["lines"][0] and run["page_errors"] == []
    assert 0 < run["load_seconds"] < 10 and (tmp_path / "shot.png").stat().st_size > 10_000
    assert np.isfinite(run["seconds"])
