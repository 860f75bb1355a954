"""The whole study grid on the smoke preset, as the README's main job runs it."""

import csv
import json

from shrinkformer.cli import main
from shrinkformer.experiments.grid import SWEEP_PRESETS

from .conftest import run_cli

SMOKE = [e.name for e in SWEEP_PRESETS["smoke"].experiments]


def test_smoke_sweep_writes_everything_and_rerenders_from_cache(multi30k, tmp_path):
    out = tmp_path / "smoke"
    args = ["-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out), "--threads", "1"]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == SMOKE and all(r["status"] == "ok" for r in rows.values())
    assert rows["baseline"]["bleu_retention"] == 1.0 and rows["control"]["control_retention"] == 1.0
    assert rows["kmeans-4bit-all"]["control_retention"] == round(rows["kmeans-4bit-all"]["bleu"]
                                                                 / rows["control"]["bleu"], 4)
    for name, r in rows.items():
        assert r["packed_bytes"] == (out / "models" / f"{name}.sfz").stat().st_size
    # Bit widths and sparsity show in the sizes: fewer bits, smaller files.
    assert rows["kmeans-1bit-all"]["packed_bytes"] < rows["kmeans-4bit-all"]["packed_bytes"] < rows["kmeans-8bit-all"]["packed_bytes"]
    assert rows["prune-50-80+kmeans-4bit-all"]["scope_compression_ratio"] > rows["kmeans-4bit-all"]["scope_compression_ratio"]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(SMOKE)
    # Every row's translations are kept, and every row is tested against the baseline and the control.
    comps = result["comparisons"]
    for name in SMOKE:
        assert (out / "hypotheses" / f"{name}.test_2016_flickr.txt.gz").exists()
        if name != "baseline":
            assert any(c["a"] == "baseline" and c["b"] == name and 0 < c["p_value"] <= 1 for c in comps)
    assert any(c["a"] == "binary-fixed-all" and c["b"] == "bsflex-all" for c in comps)
    report = (out / "report.md").read_text()
    assert "| kmeans-4bit-all | yes |" in report and "## Findings" in report and "BS-Flex" in report
    assert "paired bootstrap" in report and "vs control" in report
    assert (out / "bleu_vs_compression.png").stat().st_size > 10_000

    assert result["computed_this_run"] == SMOKE  # a fresh sweep computes every row
    assert main(args) == 0  # a finished sweep re-renders from its cache: nothing is computed again
    again = json.loads((out / "results.json").read_text())
    assert again["computed_this_run"] == [] and again["rows"] == result["rows"]


def test_failed_experiment_is_recorded_and_the_rest_continue(multi30k, tiny_run, tmp_path, monkeypatch):
    from shrinkformer.experiments import sweep

    real = sweep.run_experiment

    def flaky(exp, *a, **k):
        if exp.name == "kmeans-2bit-all":
            raise RuntimeError("simulated failure")
        return real(exp, *a, **k)

    monkeypatch.setattr(sweep, "run_experiment", flaky)
    out = tmp_path / "s"
    code = main(["-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out),
                 "--baseline", str(tiny_run / "model.pt"), "--threads", "1", "--only", "kmeans-2bit-all,kmeans-4bit-all"])
    assert code == 1
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["kmeans-2bit-all"]["status"] == "failed" and "simulated failure" in rows["kmeans-2bit-all"]["error"]
    assert rows["kmeans-4bit-all"]["status"] == "ok"
    assert "kmeans-2bit-all (RuntimeError: simulated failure)" in (out / "report.md").read_text()


def test_cache_key_follows_the_model_not_its_file(tiny_run, tmp_path):
    from shrinkformer.experiments.sweep import fingerprint
    from shrinkformer.loading import load_any
    from shrinkformer.pack.format import write_packed
    cfg, tok, model = load_any(tiny_run / "model.pt")
    write_packed(model, cfg, tok, tmp_path / "same.sfz")
    assert fingerprint(tiny_run / "model.pt") == fingerprint(tmp_path / "same.sfz")
    import torch
    with torch.no_grad():
        model.encoder.layers[0].ffn.fc1.weight[0, 0] += 1.0
    write_packed(model, cfg, tok, tmp_path / "other.sfz")
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


def _comp(a, b, delta, p, split="t"):
    return {"a": a, "b": b, "split": split, "delta": delta, "p_value": p, "significant": p < 0.05}


def test_pruning_vs_quantization_follows_the_significance_tests():
    from shrinkformer.experiments.report import findings
    rows = _rows(prune_30_50=(39.0, 1.5), kmeans_8bit_all=(39.5, 3.0), kmeans_1bit_all=(30.0, 12.0))
    prune = lambda comps: next(f for f in findings(rows, comps, ["t"]) if f.startswith("**Pruning"))  # noqa: E731
    better = prune([_comp("prune-30-50", "kmeans-8bit-all", 0.5, 0.01), _comp("prune-30-50", "kmeans-1bit-all", -9, 0.001)])
    assert "kmeans-8bit-all (3.00x) is significantly better" in better and "pruning is worse" in better
    same = prune([_comp("prune-30-50", "kmeans-8bit-all", 0.5, 0.2), _comp("prune-30-50", "kmeans-1bit-all", -9, 0.001)])
    assert "no significant difference in BLEU either way" in same and "+0.50 BLEU on t (p = 0.200)" in same
    worse = prune([_comp("prune-30-50", "kmeans-8bit-all", -0.5, 0.01), _comp("prune-30-50", "kmeans-1bit-all", -9, 0.001)])
    assert "pruning keeps more BLEU, unlike the study" in worse
    untested = prune([])
    assert "No quantization row at a ratio at least as high was tested" in untested


def test_a_difference_is_called_one_only_where_the_test_says_so():
    from shrinkformer.experiments.report import summary
    comps = [_comp("a", "b", 0.4, 0.30, "x"), _comp("a", "b", -0.9, 0.01, "y"), _comp("a", "b", 0.1, 0.70, "z")]
    text = summary(comps, "a", "b", ["x", "y", "z"])
    assert "+0.40 BLEU on x (p = 0.300)" in text and text.endswith("significantly lower on 1 of 3 (y)")
    assert summary(comps[:1] + comps[2:], "a", "b", ["x", "z"]).endswith("no significant difference on any of the 2 test sets")
    assert "no significance test" in summary(comps, "a", "c", ["x"])


def test_paired_bootstrap_is_sacrebleus_and_deterministic():
    from shrinkformer.evaluate.significance import paired_bootstrap
    refs = [f"a small dog number {i} runs in the park" for i in range(200)]
    good = list(refs)
    bad = [r if i % 3 else "a cat sleeps" for i, r in enumerate(refs)]
    first = paired_bootstrap(("good", good), [("bad", bad), ("same", list(good))], refs, "t")
    assert first == paired_bootstrap(("good", good), [("bad", bad), ("same", list(good))], refs, "t")
    bad_c, same_c = first
    assert bad_c.delta < 0 and bad_c.significant and bad_c.p_value <= 0.01
    assert same_c.delta == 0 and same_c.p_value == 1.0 and not same_c.significant


def test_a_rows_retraining_state_lives_outside_the_work_tree(tmp_path, monkeypatch):
    """A fresh checkout on the same machine (how sessions continue) must find a half-done row."""
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.experiments.sweep import cache_key, work_dir

    monkeypatch.setenv("SHRINKFORMER_CACHE", str(tmp_path / "cache"))
    exp, sp = EXPERIMENTS["kmeans-4bit-all"], SWEEP_PRESETS["multi30k"]
    key = cache_key(exp, sp, "0" * 64)
    where = work_dir(exp, key)
    assert where.parent == tmp_path / "cache" / "sweep" and where.name == f"kmeans-4bit-all-{key}"
    assert work_dir(exp, cache_key(exp, SWEEP_PRESETS["quick"], "0" * 64)) != where  # other settings, other state


def test_a_finding_says_on_how_many_test_sets_it_holds():
    from shrinkformer.experiments.report import _verdict

    args = ("A and B", "A is better", "A is worse")
    assert _verdict(3, 0, 3, *args) == "A is better on every test set, significantly"
    assert _verdict(1, 0, 3, *args) == "A is better on 1 of 3 test sets, significantly; the others do not separate A and B"
    assert _verdict(0, 2, 3, *args).startswith("A is worse on 2 of 3 test sets")
    assert _verdict(0, 0, 3, *args) == "the tests do not separate A and B"
    assert _verdict(1, 1, 3, *args) == "A and B trade places across the test sets"


def test_rows_not_run_yet_are_named_and_counted():
    from shrinkformer.experiments.report import findings
    rows = _rows(prune_30_50=(39.0, 1.5))
    one = findings(rows + [{"name": "kmeans-1bit-all", "status": "pending"}], [], ["t"])
    assert one[-1].startswith("**Not run yet** (1 row; ") and one[-1].endswith(": kmeans-1bit-all.")
    two = findings(rows + [{"name": n, "status": "pending"} for n in ("a", "b")], [], ["t"])
    assert two[-1].startswith("**Not run yet** (2 rows; ") and two[-1].endswith(": a, b.")


def test_a_staged_budget_row_is_set_against_its_one_shot_twin_and_the_best_uniform_row():
    from shrinkformer.experiments.report import findings

    def row(name, method, bleu, ratio, **extra):
        return {"name": name, "method": method, "status": "ok", "bleu": bleu, "bleu_retention": bleu / 40.0,
                "compression_ratio": ratio * 0.8, "model_compression_ratio": ratio, "params_compressed_share": 1.0,
                **extra}
    retrained = [{"stage": "p", "when": "retrained"}, {"stage": "k", "when": "retrained"},
                 {"stage": "b", "when": "retrained"}]
    rows = [row("baseline", "none", 40.0, 1.0), row("uniform-8x", "kmeans", 39.0, 8.0),
            row("mixed-12x", "mixed", 38.0, 12.0), row("mixed-12x-staged", "mixed", 39.0, 12.0, history=retrained)]
    comps = [_comp("mixed-12x", "mixed-12x-staged", 1.0, 0.01), _comp("uniform-8x", "mixed-12x-staged", 0.0, 0.5)]
    text = next(f for f in findings(rows, comps, ["t"]) if f.startswith("**Budgeted allocation (mixed-12x-staged)"))
    assert "after each kind of compression (3 retrainings) instead of once after all of it (mixed-12x, 95.0%)" in text
    assert "staged minus one-shot: +1.00 BLEU on t (p = 0.010)" in text and "staged retraining helps" in text
    assert "uniform-8x (97.5% at 8.00x; the budgeted model is at 1.500x its ratio)" in text
    # a gradual row: against its two-epoch twin and against the twin retrained as long, once
    rows += [row("mixed-12x-8ep", "mixed", 38.5, 12.0), row("mixed-12x-gradual", "mixed", 38.0, 12.0,
                                                             history=retrained + retrained[:1])]
    comps += [_comp("mixed-12x", "mixed-12x-gradual", 0.0, 0.5), _comp("mixed-12x-8ep", "mixed-12x-gradual", -0.5, 0.02)]
    text = next(f for f in findings(rows, comps, ["t"]) if f.startswith("**Budgeted allocation (mixed-12x-gradual)"))
    assert "reached from 50% in retrained steps (4 retrainings) instead of in one cut (mixed-12x, 95.0%)" in text
    assert "Against mixed-12x-8ep (96.2%, one retraining at the end): gradual minus one-cut: -0.50 BLEU on t " \
           "(p = 0.020)" in text


def test_compress_config_runs_what_the_sweep_runs_for_a_row(multi30k, tiny_run, tmp_path):
    """``compress --config`` names a row and a preset; it files the same cache key as the sweep's
    row, packs the same file and scores the same translations."""
    from shrinkformer.experiments.grid import EXPERIMENTS, SWEEP_PRESETS
    from shrinkformer.experiments.sweep import cache_key, fingerprint, load_hypotheses

    config = tmp_path / "row.yaml"
    config.write_text("compress:\n  row: kmeans-4bit-all\n  retrain_epochs: 2\npreset:\n  name: smoke\n")
    report, packed = tmp_path / "r.json", tmp_path / "cfg" / "k4.sfz"
    model = tiny_run / "model.pt"
    assert main(["-q", "compress", str(model), "--config", str(config), "--set", "compress.retrain_epochs=null",
                 "--data-dir", str(multi30k), "--threads", "1", "-o", str(packed), "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    # --set took the file's retrain_epochs back to the row's own: the row is the grid's row exactly
    assert r["cache_key"] == cache_key(EXPERIMENTS["kmeans-4bit-all"], SWEEP_PRESETS["smoke"], fingerprint(model))
    out = tmp_path / "sweep"
    assert main(["-q", "reproduce", "--preset", "smoke", "--data-dir", str(multi30k), "-o", str(out),
                 "--baseline", str(model), "--threads", "1", "--only", "kmeans-4bit-all"]) == 0
    cached = json.loads((out / "cache" / "kmeans-4bit-all.json").read_text())
    assert cached["key"] == r["cache_key"] and cached["row"]["tests"] == r["tests"]
    assert cached["row"]["packed_bytes"] == r["packed_bytes"] == packed.stat().st_size
    split = next(iter(r["tests"]))
    assert load_hypotheses(tmp_path / "cfg", "kmeans-4bit-all", split) == load_hypotheses(out, "kmeans-4bit-all", split)
    bad = run_cli("compress", str(model), "--config", str(config), "--set", "compress.row=nope", "-o",
                  str(tmp_path / "x.sfz"))
    assert bad.returncode != 0 and "compress.row must name a grid row" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.sfz").exists()
    both = run_cli("compress", str(model), "--config", str(config), "--method", "kmeans", "-o", str(tmp_path / "y.sfz"))
    assert both.returncode != 0 and "--method does not go with --config" in both.stderr


def test_longer_retraining_is_measured_against_the_shorter_one_and_row_scales_against_none():
    from shrinkformer.experiments.comparisons import pairs
    from shrinkformer.experiments.report import findings

    def row(name, method, bleu, ratio):
        return {"name": name, "method": method, "status": "ok", "bleu": bleu, "bleu_retention": bleu / 40.0,
                "compression_ratio": ratio * 0.8, "model_compression_ratio": ratio, "params_compressed_share": 1.0}
    rows = [row("baseline", "none", 40.0, 1.0), row("mixed-25x", "mixed", 34.0, 25.0),
            row("mixed-25x-8ep", "mixed", 36.0, 25.0), row("mixed-25x-gradual", "mixed", 36.0, 25.0),
            row("mixed-25x-16ep", "mixed", 37.0, 25.0), row("bsflex-all", "bsflex", 38.0, 3.36),
            row("bsflex-all-rowscale", "bsflex", 37.5, 3.35)]
    stated = set(pairs(rows))
    # the grid lists 8 epochs and the gradual row before 16 epochs: they are its references
    assert {("mixed-25x-8ep", "mixed-25x-16ep"), ("mixed-25x-gradual", "mixed-25x-16ep"),
            ("mixed-25x-8ep", "mixed-25x-gradual"), ("bsflex-all", "bsflex-all-rowscale")} <= stated
    assert ("mixed-25x-16ep", "mixed-25x-8ep") not in stated and ("mixed-25x-16ep", "mixed-25x-gradual") not in stated
    comps = [_comp("mixed-25x", "mixed-25x-16ep", 3.0, 0.001), _comp("mixed-25x-8ep", "mixed-25x-16ep", 1.0, 0.01),
             _comp("mixed-25x-gradual", "mixed-25x-16ep", 1.0, 0.01),
             _comp("bsflex-all", "bsflex-all-rowscale", -0.5, 0.2)]
    text = findings(rows, comps, ["t"])
    long = next(f for f in text if f.startswith("**Budgeted allocation (mixed-25x-16ep)"))
    assert "Against mixed-25x-8ep (90.0%, 8 epochs): 16 minus 8 epochs: +1.00 BLEU on t (p = 0.010)" in long
    assert "16 epochs help over 8 on every test set, significantly" in long
    assert "Against mixed-25x-gradual" not in long  # not one retraining: stated under neither name as such
    scaled = next(f for f in text if f.startswith("**Per-row scales (bsflex-all-rowscale)"))
    assert "keeps 93.8% at 2.68x against 95.0% at 2.69x without" in scaled
    assert "With minus without: -0.50 BLEU on t (p = 0.200)" in scaled and "do not separate with and without" in scaled


def test_a_gradual_row_with_epochs_moved_to_the_end_is_measured_against_both_schedules():
    from shrinkformer.experiments.comparisons import pairs, respread
    from shrinkformer.experiments.report import findings

    def row(name, bleu, retrainings):
        return {"name": name, "method": "mixed", "status": "ok", "bleu": bleu, "bleu_retention": bleu / 40.0,
                "compression_ratio": 20.0, "model_compression_ratio": 25.0, "params_compressed_share": 1.0,
                "history": [{"when": "retrained"}] * retrainings}
    rows = [{**row("baseline", 40.0, 0), "method": "none", "model_compression_ratio": 1.0},
            row("mixed-25x", 34.0, 1), row("mixed-25x-8ep", 36.0, 1), row("mixed-25x-gradual", 36.0, 4),
            row("mixed-25x-16ep", 37.0, 1), row("mixed-25x-gradual-1+6ep", 37.5, 4)]
    assert respread("mixed-25x-gradual-1+6ep") == (1, 6) and respread("mixed-25x-16ep") is None
    stated = set(pairs(rows))
    new = "mixed-25x-gradual-1+6ep"
    assert {("mixed-25x-gradual", new), ("mixed-25x-8ep", new), ("mixed-25x-16ep", new)} <= stated
    assert ("mixed-25x", new) not in stated  # its allocation's plain row is the gradual one's reference
    comps = [_comp("mixed-25x-gradual", new, 1.5, 0.001), _comp("mixed-25x-8ep", new, 1.5, 0.002),
             _comp("mixed-25x-16ep", new, 0.5, 0.3)]
    text = next(f for f in findings(rows, comps, ["t"]) if f.startswith(f"**Budgeted allocation ({new})"))
    assert ("retrained with 1 epoch(s) per pruning step and 6 after the quantization (9 in all) instead of 2 per "
            "retraining (8 in all) (mixed-25x-gradual, 90.0%): re-spread minus even: +1.50 BLEU on t (p = 0.001)") in text
    assert "Against mixed-25x-16ep (92.5%, one retraining at the end): re-spread minus one-shot: +0.50 BLEU" in text


def test_a_re_spread_row_without_its_gradual_twin_is_still_measured_against_the_one_shot_rows():
    from shrinkformer.experiments.comparisons import pairs
    from shrinkformer.experiments.report import findings

    rows = [{"name": n, "method": "mixed", "status": "ok", "bleu": b, "bleu_retention": b / 40.0,
             "compression_ratio": 24.0, "model_compression_ratio": 32.0, "params_compressed_share": 1.0}
            for n, b in (("mixed-32x", 30.0), ("mixed-32x-8ep", 34.0), ("mixed-32x-gradual-1+6ep", 35.0))]
    new = "mixed-32x-gradual-1+6ep"
    assert ("mixed-32x-8ep", new) in set(pairs(rows)) and ("mixed-32x", new) not in set(pairs(rows))
    text = next(f for f in findings(rows, [_comp("mixed-32x-8ep", new, 1.0, 0.01)], ["t"])
                if f.startswith(f"**Budgeted allocation ({new})"))
    assert "Against mixed-32x-8ep (85.0%, one retraining at the end): re-spread minus one-shot: +1.00 BLEU" in text


def test_a_row_is_measured_against_the_rows_its_grid_entry_names():
    """``Experiment.against``: stepped binarization against the same epochs without the steps and the
    one-shot row, paired and worded in the report (a reference not run yet is left out)."""
    from shrinkformer.experiments.comparisons import pairs
    from shrinkformer.experiments.report import findings

    new = "mixed-25x-gradual-binary3-1+4ep"
    rows = [{"name": n, "method": "mixed", "status": "ok", "bleu": b, "bleu_retention": b / 40.0,
             "compression_ratio": 20.0, "model_compression_ratio": 25.0, "params_compressed_share": 1.0}
            for n, b in (("mixed-25x-gradual-1+6ep", 36.0), (new, 37.0))]
    stated = set(pairs(rows))
    assert ("mixed-25x-gradual-1+6ep", new) in stated and not any(a == "mixed-25x-16ep" for a, _ in stated)
    text = next(f for f in findings(rows, [_comp("mixed-25x-gradual-1+6ep", new, 1.0, 0.01)], ["t"])
                if f.startswith(f"**Budgeted allocation ({new})"))
    assert "binarized in 3 groups, the most sensitive first, each retrained, instead of all at once." in text
    assert ("Against mixed-25x-gradual-1+6ep (90.0%): stepped minus mixed-25x-gradual-1+6ep: +1.00 BLEU on t "
            "(p = 0.010) — significantly higher on the test set; stepped is better on every test set, "
            "significantly.") in text
