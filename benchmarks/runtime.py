"""The torch-free runtime against CTranslate2 (int8 and float32, the same weights through our
exporter) and against our own torch path: peak RSS at batch 1 and at batches of 64, batch-1
latency, throughput over the split in input-order chunks of 64, BLEU, cold start (a fresh process
translating one line from stdin) and the installed size of a venv holding only each engine.

Each measurement is a fresh process that imports only what its engine needs (the runtime worker
imports shrinkformer.runtime, never torch; the CTranslate2 worker imports ctranslate2 and
sentencepiece), at 1 and 2 threads, rounds alternating between engines, medians reported. The
runtime's opt-in lean mode (``--int8 --half-cache``: 4-bit layers with int8 activations, keys and
values in float16) runs beside the exact one, with its BLEU and its lines against the exact mode's
(``int8_*`` fields; benchmarks/int8_cache.py separates the two options' BLEU):

    python benchmarks/runtime.py --rounds 3 --out results/benchmarks/runtime.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

from output import write  # benchmarks/output.py: no torch in the workers

# What only the parent needs (platform, shlex, shutil, statistics, subprocess, tempfile) is imported
# in the functions that use it: a worker's peak RSS is its engine's, not the harness's (statistics
# alone pulls in decimal and fractions; the six together are 2.6 MB in every worker).

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHRINKFORMER_DATA", ROOT.parent / "shared" / "data" / "multi30k"))
MODELS = ROOT / "results" / "multi30k" / "models"
RUNTIME_MODELS = {"fp32": "baseline", "4-bit": "kmeans-4bit-all+embeddings", "1-bit": "bsflex-all+kmeans-4bit-embeddings",
                  "pruned": "prune-50-80+kmeans-4bit-all+embeddings", "mixed-20x": "mixed-20x"}
CT2_CACHE = Path(os.environ.get("SHRINKFORMER_CACHE", Path.home() / ".cache" / "shrinkformer")) / "bench-ct2"


def lines(split: str, lang: str) -> list[str]:
    with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def vmhwm_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


# ---------------------------------------------------------------- workers (fresh processes)

def worker(engine: str, path: str, mode: str, threads: int, split: str, latency_sentences: int, out: str) -> None:
    source = lines(split, "en")
    if mode == "batch1":
        source = source[:latency_sentences]
    chunk = 1 if mode == "batch1" else 64
    if engine in ("runtime", "runtime-int8"):
        from shrinkformer.runtime.translator import Translator
        lean = engine == "runtime-int8"  # the fast and small options together: --int8 --half-cache
        translator = Translator.load(path, batch_sentences=chunk, threads=threads, int8=lean, half_cache=lean)
        translate = translator.translate
        assert "torch" not in sys.modules
    elif engine == "torch":
        import torch

        from shrinkformer.loading import load_any
        from shrinkformer.model.search import SearchConfig
        from shrinkformer.translate import Translator as TorchTranslator
        torch.set_num_threads(threads)
        cfg, tok, model = load_any(path)
        translate = TorchTranslator(model, tok, SearchConfig(beam_size=cfg.decode.beam_size),
                                    batch_sentences=chunk).translate
    else:  # ctranslate2: its own tokenization of our vocabulary, as export/ctranslate2.py writes it
        import ctranslate2
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(Path(path) / "sentencepiece.model"))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        index = {p: i for i, p in enumerate(pieces)}
        eos, bos, pad = (pieces[i] for i in (sp.eos_id(), sp.bos_id(), sp.pad_id()))
        ct2 = ctranslate2.Translator(path, device="cpu", inter_threads=1, intra_threads=threads)

        def translate(block: list[str]) -> list[str]:
            ids = sp.encode(block, out_type=int)
            limit = int((max(len(s) for s in ids) + 1) * 1.2 + 10) - 1  # ours, for the longest in the batch
            results = ct2.translate_batch([[pieces[t] for t in s] + [eos] for s in ids], beam_size=5,
                                          max_decoding_length=limit, suppress_sequences=[[bos], [pad]],
                                          max_input_length=0, max_batch_size=64)
            return sp.decode([[index[p] for p in r.hypotheses[0]] for r in results])
    translate(source[:2])  # first call: allocations, thread pools
    started = time.perf_counter()
    hyps = [h for i in range(0, len(source), chunk) for h in translate(source[i:i + chunk])]
    seconds = time.perf_counter() - started
    Path(out).write_text("\n".join(hyps) + "\n", encoding="utf-8")
    print(json.dumps({"seconds": seconds, "sentences": len(source), "vmhwm_kb": vmhwm_kb()}))


COLD_CT2 = ("import sys, ctranslate2, sentencepiece as spm\nd = sys.argv[1]\n"
            "sp = spm.SentencePieceProcessor(model_file=d + '/sentencepiece.model')\n"
            "t = ctranslate2.Translator(d, device='cpu', intra_threads=1)\n"
            "for line in sys.stdin:\n"
            "    r = t.translate_batch([sp.encode(line.strip(), out_type=str) + [sp.id_to_piece(sp.eos_id())]], beam_size=5)\n"
            "    print(sp.decode(sp.piece_to_id(r[0].hypotheses[0])))\n")


# ---------------------------------------------------------------- the parent

def run_worker(engine: str, path: Path, mode: str, threads: int, args, tmp: Path) -> dict:
    import shlex
    import subprocess
    out = tmp / f"hyps-{os.getpid()}-{time.monotonic_ns()}.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--worker", engine, str(path), "--mode", mode, "--threads", str(threads),
               "--split", args.split, "--latency-sentences", str(args.latency_sentences), "--hyps", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode:
        raise SystemExit(f"worker failed: {shlex.join(command)}\n{result.stderr[-2000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["hyps"] = out.read_text(encoding="utf-8").splitlines()
    return row


def cold_start(engine: str, path: Path, line: str) -> float:
    import shlex
    import subprocess
    if engine == "runtime":
        command = [str(Path(sys.executable).parent / "shrinkformer-translate"), str(path), "--threads", "1"]
    else:
        command = [sys.executable, "-c", COLD_CT2, str(path)]
    started = time.perf_counter()
    result = subprocess.run(command, input=line + "\n", capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    if result.returncode or not result.stdout.strip():
        raise SystemExit(f"cold start failed: {shlex.join(command)}\n{result.stderr[-2000:]}")
    return seconds


def export_ct2(quantization: str) -> Path:
    """Our baseline through our exporter (once, cached): a CTranslate2 model directory."""
    import shutil
    import subprocess
    target = CT2_CACHE / f"baseline-{quantization}"
    if not (target / "model.bin").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(Path(sys.executable).parent / "shrinkformer"), "export", str(MODELS / "baseline.sfz"),
                        "--format", "ctranslate2", "--quantization", quantization, "-o", str(target)], check=True,
                       capture_output=True)
    return target


def installed_size(packages: list[str], tmp: Path, name: str) -> dict:
    """Bytes a fresh venv's site-packages holds with ``packages`` installed, pip's own files not counted."""
    import subprocess
    venv = tmp / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    before = _tree_bytes(venv)
    subprocess.run([str(pip), "install", "-q", *packages], check=True, capture_output=True, timeout=1200)
    freeze = subprocess.run([str(pip), "freeze"], capture_output=True, text=True).stdout.split()
    return {"bytes": _tree_bytes(venv) - before, "packages": freeze}


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def cold_start_only(args) -> None:
    import platform
    import shlex
    import statistics
    engines = {"runtime 4-bit": ("runtime", MODELS / f"{RUNTIME_MODELS['4-bit']}.sfz"),
               "ctranslate2 int8": ("ctranslate2", export_ct2("int8"))}
    first_line = lines(args.split, "en")[0]
    cold: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, (engine, path) in engines.items():
            cold[name].append(cold_start(engine, path, first_line))
    result = {"command": "python benchmarks/runtime.py " + shlex.join(sys.argv[1:]), "rounds": args.rounds,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "cold_start_vs_ct2_int8": round(statistics.median(cold["runtime 4-bit"])
                                              / statistics.median(cold["ctranslate2 int8"]), 3),
              "cold_start_seconds": {k: [round(v, 3) for v in vs] for k, vs in cold.items()}}
    write(result, args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--mode", default="batch64", help=argparse.SUPPRESS)
    p.add_argument("--hyps", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--latency-sentences", type=int, default=100)
    p.add_argument("--thread-counts", default="1,2")
    p.add_argument("--skip-install", action="store_true", help="leave the installed-size measurement out")
    p.add_argument("--cold-start-only", action="store_true",
                   help="only the cold start (one line through the CLI vs CTranslate2 int8's Python API), "
                        "--rounds times alternating: a quick check of that one bar")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.mode, args.threads, args.split, args.latency_sentences,
                      args.hyps)
    if args.cold_start_only:
        return cold_start_only(args)
    import platform  # the parent's: after the workers' return
    import shlex
    import statistics
    import tempfile

    import sacrebleu

    engines = {f"runtime {k}": ("runtime", MODELS / f"{v}.sfz") for k, v in RUNTIME_MODELS.items()}
    # the opt-in int8 mode (csrc/int8.c): not exact, so measured beside the exact runtime with its BLEU
    engines["runtime 4-bit int8"] = ("runtime-int8", MODELS / f"{RUNTIME_MODELS['4-bit']}.sfz")
    engines["torch 4-bit"] = ("torch", MODELS / f"{RUNTIME_MODELS['4-bit']}.sfz")
    engines["ctranslate2 int8"] = ("ctranslate2", export_ct2("int8"))
    engines["ctranslate2 float32"] = ("ctranslate2", export_ct2("float32"))
    refs = lines(args.split, "de")
    threads = [int(t) for t in args.thread_counts.split(",")]
    samples: dict[tuple[str, int, str], list[dict]] = {}
    cold: dict[str, list[float]] = {"runtime 4-bit": [], "ctranslate2 int8": []}
    first_line = lines(args.split, "en")[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, (engine, path) in engines.items():
                for t in threads:
                    for mode in ("batch1", "batch64"):
                        samples.setdefault((name, t, mode), []).append(run_worker(engine, path, mode, t, args, Path(tmp)))
                print(f"round {r + 1}: {name}", file=sys.stderr, flush=True)
            for name in cold:
                cold[name].append(cold_start(engines[name][0], engines[name][1], first_line))
        install = {} if args.skip_install else {
            "runtime": installed_size([str(ROOT)], Path(tmp), "venv-runtime"),
            "ctranslate2": installed_size(["ctranslate2", "sentencepiece"], Path(tmp), "venv-ct2")}

    rows = {}
    for name in engines:
        per_thread = {}
        for t in threads:
            b1, b64 = samples[(name, t, "batch1")], samples[(name, t, "batch64")]
            per_thread[t] = {
                "batch1_ms_per_sentence": round(statistics.median(s["seconds"] / s["sentences"] for s in b1) * 1000, 2),
                "sentences_per_second": round(statistics.median(s["sentences"] / s["seconds"] for s in b64), 1),
                "peak_rss_mb_batch1": round(statistics.median(s["vmhwm_kb"] for s in b1) / 1024, 1),
                "peak_rss_mb_batch64": round(statistics.median(s["vmhwm_kb"] for s in b64) / 1024, 1),
                "bleu_batch64": round(sacrebleu.corpus_bleu(b64[0]["hyps"], [refs]).score, 2),
                "rounds_batch1_ms": [round(s["seconds"] / s["sentences"] * 1000, 2) for s in b1],
                "rounds_sentences_per_second": [round(s["sentences"] / s["seconds"], 1) for s in b64]}
        best_latency = min(threads, key=lambda t: per_thread[t]["batch1_ms_per_sentence"])
        best_speed = max(threads, key=lambda t: per_thread[t]["sentences_per_second"])
        rows[name] = {"threads": per_thread, "best_batch1_threads": best_latency, "best_throughput_threads": best_speed,
                      "batch1_ms_per_sentence": per_thread[best_latency]["batch1_ms_per_sentence"],
                      "sentences_per_second": per_thread[best_speed]["sentences_per_second"],
                      "peak_rss_mb_batch1": per_thread[best_latency]["peak_rss_mb_batch1"],
                      "peak_rss_mb_batch64": per_thread[best_speed]["peak_rss_mb_batch64"],
                      "bleu_batch64": per_thread[best_speed]["bleu_batch64"],
                      "file_bytes": _tree_bytes(engines[name][1]) if engines[name][1].is_dir()
                      else engines[name][1].stat().st_size}
    ours, int8, fp32 = rows["runtime 4-bit"], rows["ctranslate2 int8"], rows["ctranslate2 float32"]
    q8 = rows["runtime 4-bit int8"]
    torch_rows = rows["torch 4-bit"]
    reference_b1 = samples[("torch 4-bit", threads[0], "batch1")][0]["hyps"]
    reference_b64 = samples[("torch 4-bit", threads[0], "batch64")][0]["hyps"]
    mine_b1 = samples[("runtime 4-bit", threads[0], "batch1")][0]["hyps"]
    mine_b64 = samples[("runtime 4-bit", threads[0], "batch64")][0]["hyps"]
    from shrinkformer.evaluate.significance import paired_bootstrap
    q8_b64 = samples[("runtime 4-bit int8", threads[0], "batch64")][0]["hyps"]
    int8_test = paired_bootstrap(("exact", mine_b64), [("int8", q8_b64)], refs, args.split)[0]
    result = {
        "command": "python benchmarks/runtime.py " + shlex.join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "split": args.split, "rounds": args.rounds, "beam": 5,
        "rss_batch1_vs_ct2_int8": round(ours["peak_rss_mb_batch1"] / int8["peak_rss_mb_batch1"], 3),
        "rss_batch64_vs_ct2_int8": round(ours["peak_rss_mb_batch64"] / int8["peak_rss_mb_batch64"], 3),
        "install_vs_ct2": round(install["runtime"]["bytes"] / install["ctranslate2"]["bytes"], 3) if install else None,
        "batch1_latency_vs_ct2_int8": round(ours["batch1_ms_per_sentence"] / int8["batch1_ms_per_sentence"], 3),
        "throughput_vs_ct2_best": round(ours["sentences_per_second"] / max(int8["sentences_per_second"],
                                                                           fp32["sentences_per_second"]), 3),
        "mixed20_latency_vs_4bit": round(rows["runtime mixed-20x"]["batch1_ms_per_sentence"]
                                         / ours["batch1_ms_per_sentence"], 3),
        "cold_start_vs_ct2_int8": round(statistics.median(cold["runtime 4-bit"])
                                        / statistics.median(cold["ctranslate2 int8"]), 3),
        "cold_start_seconds": {k: [round(v, 3) for v in vs] for k, vs in cold.items()},
        # the opt-in int8 mode against the same bars, and what it costs
        "int8_batch1_latency_vs_ct2_int8": round(q8["batch1_ms_per_sentence"] / int8["batch1_ms_per_sentence"], 3),
        "int8_throughput_vs_ct2_best": round(q8["sentences_per_second"] / max(int8["sentences_per_second"],
                                                                              fp32["sentences_per_second"]), 3),
        "int8_rss_batch1_vs_ct2_int8": round(q8["peak_rss_mb_batch1"] / int8["peak_rss_mb_batch1"], 3),
        "int8_rss_batch64_vs_ct2_int8": round(q8["peak_rss_mb_batch64"] / int8["peak_rss_mb_batch64"], 3),
        "int8_bleu_minus_exact": round(q8["bleu_batch64"] - ours["bleu_batch64"], 2),
        "int8_identical_lines_to_exact": {"batch64": sum(a == b for a, b in zip(q8_b64, mine_b64)), "of": len(mine_b64)},
        # is its BLEU difference from the exact mode more than chance? (sacreBLEU's paired bootstrap)
        "int8_vs_exact_paired_bootstrap": {"delta": int8_test.delta, "p_value": round(int8_test.p_value, 4),
                                           "significant": int8_test.significant},
        "runtime_vs_torch_path_identical_lines": {"batch1": sum(a == b for a, b in zip(mine_b1, reference_b1)),
                                                  "batch1_of": len(reference_b1),
                                                  "batch64": sum(a == b for a, b in zip(mine_b64, reference_b64)),
                                                  "batch64_of": len(reference_b64)},
        "runtime_vs_torch_path_speed": {"batch1": round(torch_rows["batch1_ms_per_sentence"]
                                                        / ours["batch1_ms_per_sentence"], 3),
                                        "throughput": round(ours["sentences_per_second"]
                                                            / torch_rows["sentences_per_second"], 3)},
        "installed": install, "engines": rows,
    }
    write(result, args.out)


if __name__ == "__main__":
    main()
