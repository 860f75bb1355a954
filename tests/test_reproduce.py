"""The whole study grid on the smoke preset, as the README's main job runs it."""

import csv
import json
import time

from shrinkformer.cli import main
from shrinkformer.experiments.grid import GRID


def test_smoke_sweep_writes_everything_and_rerenders_from_cache(multi30k, tmp_path):
    out = tmp_path / "smoke"
    args = ["-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out), "--threads", "1"]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == [e.name for e in GRID] and all(r["status"] == "ok" for r in rows.values())
    assert rows["baseline"]["bleu_retention"] == 1.0
    for name, r in rows.items():
        assert r["packed_bytes"] == (out / "models" / f"{name}.sfz").stat().st_size
    # Bit widths and sparsity show in the sizes: fewer bits, smaller files.
    assert rows["kmeans-1bit-all"]["packed_bytes"] < rows["kmeans-4bit-all"]["packed_bytes"] < rows["kmeans-8bit-all"]["packed_bytes"]
    assert rows["prune-50-80+kmeans-4bit-all"]["scope_compression_ratio"] > rows["kmeans-4bit-all"]["scope_compression_ratio"]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(GRID)
    report = (out / "report.md").read_text()
    assert "| kmeans-4bit-all | yes |" in report and "## Findings" in report and "BS-Flex" in report
    assert (out / "bleu_vs_compression.png").stat().st_size > 10_000

    started = time.perf_counter()  # a finished sweep re-renders from its cache
    assert main(args) == 0
    assert time.perf_counter() - started < 20
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]


def test_failed_experiment_is_recorded_and_the_rest_continue(multi30k, tmp_path, monkeypatch):
    from shrinkformer.experiments import sweep

    real = sweep.run_experiment

    def flaky(exp, *a, **k):
        if exp.name == "kmeans-2bit-all":
            raise RuntimeError("simulated failure")
        return real(exp, *a, **k)

    monkeypatch.setattr(sweep, "run_experiment", flaky)
    out = tmp_path / "s"
    code = main(["-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out),
                 "--threads", "1", "--only", "kmeans-2bit-all,kmeans-4bit-all"])
    assert code == 1
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["kmeans-2bit-all"]["status"] == "failed" and "simulated failure" in rows["kmeans-2bit-all"]["error"]
    assert rows["kmeans-4bit-all"]["status"] == "ok"
    assert "kmeans-2bit-all (RuntimeError: simulated failure)" in (out / "report.md").read_text()


def test_cache_key_follows_the_model_not_its_file(tiny_run, tmp_path):
    from shrinkformer.experiments.sweep import fingerprint
    from shrinkformer.loading import load_any
    from shrinkformer.pack.format import save_packed
    cfg, tok, model = load_any(tiny_run / "model.pt")
    save_packed(model, cfg, tok, tmp_path / "same.sfz")
    assert fingerprint(tiny_run / "model.pt") == fingerprint(tmp_path / "same.sfz")
    import torch
    with torch.no_grad():
        model.encoder.layers[0].ffn.fc1.weight[0, 0] += 1.0
    save_packed(model, cfg, tok, tmp_path / "other.sfz")
    assert fingerprint(tmp_path / "other.sfz") != fingerprint(tmp_path / "same.sfz")


def _rows(**bleu_ratio):
    base = {"name": "baseline", "method": "none", "status": "ok", "bleu": 40.0, "bleu_retention": 1.0,
            "compression_ratio": 1.0, "params_compressed_share": 0.0}
    rows = [base]
    for name, (bleu, ratio) in bleu_ratio.items():
        name = name.replace("_", "-")
        method = "prune" if name.startswith("prune") else "kmeans"
        rows.append({"name": name, "method": method, "status": "ok", "bleu": bleu, "bleu_retention": bleu / 40.0,
                     "compression_ratio": ratio, "params_compressed_share": 0.7})
    return rows


def test_pruning_vs_quantization_is_judged_by_dominance():
    from shrinkformer.experiments.report import findings, pareto
    worse = findings(_rows(prune_30_50=(39.0, 1.5), kmeans_8bit_all=(39.5, 3.0), kmeans_1bit_all=(30.0, 12.0)))
    text = next(f for f in worse if f.startswith("**Pruning vs quantization (prune-30-50)"))
    assert "kmeans-8bit-all keeps 98.8% at 3.00x" in text and "pruning is worse" in text
    tie = findings(_rows(prune_30_50=(39.8, 1.5), kmeans_4bit_all=(39.5, 2.7)))  # 0.3 BLEU apart: a tie
    assert "kmeans-4bit-all keeps 98.8% at 2.70x" in next(f for f in tie if "prune-30-50" in f)
    better = findings(_rows(prune_30_50=(39.8, 4.0), kmeans_8bit_all=(39.0, 3.0)))
    assert "kmeans-8bit-all keeps only 97.5% at a ratio no higher (3.00x): here pruning beats" in next(
        f for f in better if "prune-30-50" in f)
    neither = findings(_rows(prune_30_50=(39.8, 2.0), kmeans_8bit_all=(38.0, 3.0)))
    assert "neither dominates" in next(f for f in neither if "prune-30-50" in f)
    front = [r["name"] for r in pareto(_rows(prune_30_50=(39.0, 1.5), kmeans_8bit_all=(39.5, 3.0),
                                             kmeans_1bit_all=(30.0, 12.0)))]
    assert front == ["baseline", "kmeans-8bit-all", "kmeans-1bit-all"]
