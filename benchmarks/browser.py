"""The page in headless Chromium and its runtime under Node against the native runtime, on the same
machine and model: load time, batch-1 ms/sentence and words/s over the first N test_2016_flickr
sentences, whether the lines are the native ones, and the page's weight without the model.

    cd benchmarks && python browser.py --out ../results/benchmarks/browser.json

Each round runs every engine in a fresh process (a fresh browser for Chromium), alternating:
Chromium (benchmarks/browser_driver.cjs drives the page written by ``shrinkformer web-demo``,
types a sentence, then translates the N lines with one click and reads the page's own timing),
Node (web/static/translate.mjs, the same module and JavaScript), and the native runtime at one
thread and at two (the WebAssembly build is single-threaded). Needs Debian's chromium and npm
(puppeteer-core is installed into ~/.cache/shrinkformer/node on first use)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shrinkformer.web import build, demo  # noqa: E402
from shrinkformer.web.serve import serve  # noqa: E402

DATA = Path(os.environ.get("SHRINKFORMER_DATA", ROOT.parent / "shared" / "data" / "multi30k"))
NATIVE = """
import json, sys, time
t0 = time.perf_counter()
from shrinkformer.runtime.translator import Translator
t = Translator.load(sys.argv[1], batch_sentences=1, threads=int(sys.argv[2]))
loaded = time.perf_counter()
lines = open(sys.argv[3], encoding="utf-8").read().splitlines()
out = t.translate(lines)
done = time.perf_counter()
print(json.dumps({"load_seconds": loaded - t0, "seconds": done - loaded, "lines": out,
                  "words": sum(len(x.split()) for x in out)}))
"""


def puppeteer() -> Path:
    modules = build.NODE_MODULES
    if not (modules / "puppeteer-core").is_dir():
        subprocess.run(["npm", "install", "--silent", "--prefix", str(modules.parent), "puppeteer-core@25"], check=True)
    return modules


def chromium_round(url: str, sources: Path, shot: Path, modules: Path) -> dict:
    result = subprocess.run(["node", str(ROOT / "benchmarks" / "browser_driver.cjs"), url, str(sources), str(shot)],
                            capture_output=True, text=True, check=True, timeout=1200,
                            env={**os.environ, "NODE_PATH": str(modules)})
    return json.loads(result.stdout)


def node_round(model: Path, sources: Path) -> dict:
    result = subprocess.run(["node", str(build.STATIC / demo.NODE_RUNNER), str(model), str(build.module())],
                            stdin=sources.open(), capture_output=True, text=True, check=True, timeout=1200)
    timing = json.loads(result.stderr.strip().splitlines()[-1])
    return {**timing, "lines": result.stdout.splitlines()}


def native_round(model: Path, sources: Path, threads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", NATIVE, str(model), str(threads), str(sources)], capture_output=True,
                            text=True, check=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return json.loads(result.stdout)


def summary(runs: list[dict], n: int) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    words = runs[0]["words"]
    return {"load_seconds": statistics.median(r["load_seconds"] for r in runs), "ms_per_sentence": 1000 * seconds / n,
            "words_per_second": words / seconds, "words": words, "rounds_seconds": [r["seconds"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "results" / "multi30k" / "models" / "mixed-20x.sfz")
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screenshot", type=Path, help="where to keep the page's screenshot (default: beside --out)")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("browser.py: no chromium here (Debian: apt install chromium)")
    modules = puppeteer()
    with gzip.open(DATA / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line, _ in zip(f, range(args.sentences))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = tmp / "sources.txt"
        sources.write_text("\n".join(lines) + "\n", encoding="utf-8")
        page = demo.write(args.model, tmp / "page")
        shot = args.screenshot or (args.out.with_suffix(".png") if args.out else tmp / "page.png")
        runs: dict[str, list[dict]] = {"chromium": [], "node": [], "native_1_thread": [], "native_2_threads": []}
        with serve(page) as url:
            for r in range(args.rounds):
                runs["chromium"].append(chromium_round(url, sources, shot, modules))
                runs["node"].append(node_round(args.model, sources))
                runs["native_1_thread"].append(native_round(args.model, sources, 1))
                runs["native_2_threads"].append(native_round(args.model, sources, 2))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s" for k, v in runs.items()),
                      file=sys.stderr)
    native_lines = runs["native_1_thread"][0]["lines"]
    engines = {name: summary(v, len(lines)) for name, v in runs.items()}
    for name, v in runs.items():
        engines[name]["identical_lines_share"] = sum(a == b for a, b in zip(v[0]["lines"], native_lines)) / len(lines)
    engines["chromium"]["typed"] = runs["chromium"][0]["typed"]
    page_bytes = sum(f.stat().st_size for f in demo.page_files())
    native_ms = engines["native_1_thread"]["ms_per_sentence"]
    result = {
        "command": "cd benchmarks && " + shlex.join(["python", "browser.py", *sys.argv[1:]]),
        "model": args.model.name, "sentences": len(lines), "rounds": args.rounds, "beam": 5, "batch": 1,
        "chromium_identical_lines_share": engines["chromium"]["identical_lines_share"],
        "chromium_speed_vs_native": native_ms / engines["chromium"]["ms_per_sentence"],
        "node_speed_vs_native": native_ms / engines["node"]["ms_per_sentence"],
        "model_load_seconds": engines["chromium"]["load_seconds"],
        "page_bytes_without_model": page_bytes,
        "model_bytes": args.model.stat().st_size,
        "page_files": {f.name: f.stat().st_size for f in demo.page_files()},
        "speed_vs_native_means": "native single-thread ms/sentence over the engine's (higher is faster)",
        "engines": engines,
        "chromium_version": subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip(),
        "node_version": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
        "machine": platform.platform(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
