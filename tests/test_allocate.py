"""Budgeted allocation: exact byte prices, an optimal knapsack, and the command that uses them."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from shrinkformer.cli import main
from shrinkformer.workflow.allocate import CHOICES, ROW_SCALED, Allocation, Choice, LayerAllocation, packed_layout, solve
from shrinkformer.pack.format import load_packed

from .conftest import run_cli


@pytest.mark.parametrize("choice", [c for c in CHOICES + ROW_SCALED if not c.dense], ids=lambda c: c.label)
def test_priced_layout_is_what_the_codec_packs(choice):
    weight = torch.randn(40, 56, generator=torch.Generator().manual_seed(3))
    tensors, meta = choice.codec(weight).pack()
    want_meta, want_bytes = packed_layout(weight, choice)
    assert {k: t.numel() * t.element_size() for k, t in tensors.items()} == want_bytes
    assert meta == want_meta


def brute_force(costs, sens, budget):
    names = list(costs)
    best = None
    for combo in itertools.product(*(list(costs[n]) for n in names)):
        if sum(costs[n][c] for n, c in zip(names, combo)) <= budget:
            total = sum(sens[n][c] for n, c in zip(names, combo))
            if best is None or total < best[0] - 1e-12:
                best = (total, dict(zip(names, combo)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_finds_the_optimum_within_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    choices = [Choice(0.0, b) for b in (1, 2, 4)] + [Choice()]
    costs = {f"l{i}": {c: int(torch.randint(10, 400, (1,), generator=g)) for c in choices} for i in range(5)}
    sens = {n: {c: float(torch.rand(1, generator=g)) for c in choices} for n in costs}
    budget = int(torch.randint(200, 1500, (1,), generator=g))
    want = brute_force(costs, sens, budget)
    if want is None:
        with pytest.raises(Exception, match="no allocation fits"):
            solve(costs, sens, budget)
        return
    got = solve(costs, sens, budget, grid=budget)  # a one-byte grid: exact
    assert sum(costs[n][c] for n, c in got.items()) <= budget
    assert sum(sens[n][c] for n, c in got.items()) == pytest.approx(want[0])


def test_coarse_grid_never_exceeds_the_budget():
    g = torch.Generator().manual_seed(9)
    costs = {f"l{i}": {Choice(0.0, b): int(torch.randint(1000, 9000, (1,), generator=g)) for b in (1, 2, 3, 4)}
             for i in range(30)}
    sens = {n: {c: 1.0 / c.bits for c in costs[n]} for n in costs}
    smallest = sum(min(c.values()) for c in costs.values())
    for budget in (int(smallest * 1.02), int(smallest * 1.3), 2 * smallest):
        got = solve(costs, sens, budget, grid=50)
        assert sum(costs[n][c] for n, c in got.items()) <= budget


def test_target_ratio_writes_a_model_within_the_budget(tiny_run, multi30k, tmp_path, capsys):
    out = tmp_path / "b.sfz"
    assert main(["compress", str(tiny_run / "model.pt"), "--target-ratio", "5", "--retrain-epochs", "1",
                 "--train-limit", "200", "--sensitivity-sentences", "100", "--data-dir", str(multi30k),
                 "--no-test", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    allocation = json.loads((tmp_path / "b.allocation.json").read_text())
    assert (tmp_path / "b.allocation.png").stat().st_size > 10_000
    cfg, tok, model, _ = load_packed(out)
    params = allocation["params"]
    used = out.stat().st_size - len(tok.model_proto)
    assert used == allocation["packed_bytes"] <= allocation["budget_bytes"] == int(4 * params / 5)
    assert 4 * params / used >= 5
    # every layer was compressed as allocated, and the table says so
    layers = json.loads(json.loads(out.read_bytes()[8:8 + int.from_bytes(out.read_bytes()[:8], "little")])
                        ["__metadata__"]["layers"])
    for row in allocation["layers"]:
        assert row["name"] in printed
        if row["choice"] == "dense":
            assert row["name"] not in layers
        else:
            assert layers[row["name"]].get("bits") == row["bits"]
            assert ("mask" in layers[row["name"]]) == bool(row["sparsity"])


def test_budget_bytes_and_the_dense_dtype(tiny_run, multi30k, tmp_path):
    out = tmp_path / "b.sfz"
    assert main(["-q", "compress", str(tiny_run / "model.pt"), "--budget-bytes", "60000", "--dense-dtype", "fp32",
                 "--sensitivity", "loss", "--retrain-epochs", "0", "--sensitivity-sentences", "50", "--data-dir",
                 str(multi30k), "--no-test", "-o", str(out)]) == 0
    _, tok, model, _ = load_packed(out)
    assert out.stat().st_size - len(tok.model_proto) <= 60000
    allocation = json.loads((tmp_path / "b.allocation.json").read_text())
    assert allocation["half_dense"] is False and allocation["sensitivity_method"] == "loss"
    assert all(row["sensitivity"] == 0 for row in allocation["layers"] if row["choice"] == "dense")


@pytest.mark.parametrize("args, message", [
    (["--target-ratio", "1"], "--target-ratio must be above 1, got 1.0"),
    (["--target-ratio", "0.5"], "--target-ratio must be above 1"),
    (["--budget-bytes", "0"], "--budget-bytes must be positive"),
    (["--target-ratio", "4", "--budget-bytes", "9000"], "give exactly one of --budget-bytes and --target-ratio"),
    (["--target-ratio", "4", "--method", "kmeans"], "--method and --target-ratio/--budget-bytes exclude each other"),
    (["--target-ratio", "4", "--bits", "2"], "--bits does not apply to a budgeted allocation"),
    (["--target-ratio", "4", "--final-epochs", "0"], "--final-epochs must be >= 1, got 0"),
    ([], "give --method, or --target-ratio / --budget-bytes"),
    (["--budget-bytes", "1000"], "is below the smallest model these choices reach: "),
])
def test_impossible_budgets_are_one_line_errors(tiny_run, multi30k, tmp_path, args, message):
    result = run_cli("compress", str(tiny_run / "model.pt"), *args, "--retrain-epochs", "0", "--no-test",
                     "--data-dir", str(multi30k), "-o", str(tmp_path / "b.sfz"))
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fisher_shortcut_equals_scoring_the_codecs_weights(tiny_run, monkeypatch):
    from shrinkformer.compress.scopes import eligible
    from shrinkformer.loading import load_any
    from shrinkformer.workflow import sensitivity

    _, _, model = load_any(tiny_run / "model.pt", training=True)
    weights = {n: m.weight for n, m in list(eligible(model).items())[:4]}
    fisher = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) for n, w in weights.items()}
    choices = CHOICES + ROW_SCALED
    _, masks = sensitivity.price(weights, choices, False)
    want = sensitivity.score_choices(weights, choices, masks,
                                     lambda n, w, q: float(0.5 * (fisher[n] * (w - q) ** 2).sum()))
    monkeypatch.setattr(sensitivity, "fisher_diagonal", lambda model, weights, batches: fisher)
    got = sensitivity.fisher_scores(model, weights, [], choices, masks)
    for n in weights:
        for c in choices:
            assert got[n][c] == pytest.approx(want[n][c], rel=1e-4, abs=1e-9), (n, c.label)


def test_a_resumed_run_takes_the_saved_allocation(tiny_run, multi30k, tmp_path, monkeypatch):
    from shrinkformer.loading import load_adapter
    from shrinkformer.workflow import budget

    adapter = load_adapter(tiny_run / "model.pt", training=True)
    adapter.cfg.data.data_dir = str(multi30k)
    bc = budget.BudgetConfig(target_ratio=4, sentences=40)
    first = budget.load_or_plan(adapter, bc, tmp_path)
    assert (tmp_path / "allocation.json").exists()
    monkeypatch.setattr(budget, "plan_allocation", lambda *a, **k: pytest.fail("searched again"))
    again = budget.load_or_plan(adapter, bc, tmp_path)
    assert again.choices() == first.choices() and again.to_dict() == first.to_dict()
    other = budget.BudgetConfig(target_ratio=5, sentences=40)  # other settings: not that allocation
    with pytest.raises(pytest.fail.Exception, match="searched again"):
        budget.load_or_plan(adapter, other, tmp_path)


def test_flex_allocation_retrains_the_same_choices_with_flexible_codebooks():
    from shrinkformer.compress import BinaryConfig, FlexKMeansConfig, KMeansConfig, PruneConfig
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.workflow.budget import BudgetConfig, allocation_stages

    choices = {"a": Choice(0.5, 1), "b": Choice(0.0, 2), "c": Choice(0.0, 1), "d": Choice(0.8, None), "e": Choice()}
    frozen = [(s.config, s.include) for s in allocation_stages(choices)]
    flex = [(s.config, s.include) for s in allocation_stages(choices, flex=True)]
    assert frozen == [(PruneConfig(0.5, 0.5, 1), ["a"]), (PruneConfig(0.8, 0.8, 1), ["d"]), (KMeansConfig(1), ["a"]),
                      (KMeansConfig(2), ["b"]), (BinaryConfig("flex"), ["c"])]
    assert flex == [(PruneConfig(0.5, 0.5, 1), ["a"]), (PruneConfig(0.8, 0.8, 1), ["d"]), (FlexKMeansConfig(1), ["a"]),
                    (FlexKMeansConfig(2), ["b"]), (BinaryConfig("flex"), ["c"])]
    # the setting enters the keys only when on: rows and allocations cached before it stay valid
    assert "flex" not in BudgetConfig(target_ratio=20).to_dict()
    assert "flex" not in EXPERIMENTS["mixed-20x"].spec()["budget"]
    assert EXPERIMENTS["mixed-20x-flex"].spec()["budget"] == {**EXPERIMENTS["mixed-20x"].spec()["budget"], "flex": True}


def test_staged_allocation_retrains_after_each_kind_of_compression():
    from shrinkformer.experiments.comparisons import pairs
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.workflow.budget import BudgetConfig, allocation_stages

    choices = {"a": Choice(0.5, 1), "b": Choice(0.0, 2), "c": Choice(0.0, 1), "d": Choice(0.8, None), "e": Choice()}
    once = allocation_stages(choices)
    staged = allocation_stages(choices, staged=True)
    assert [(s.config, s.include) for s in staged] == [(s.config, s.include) for s in once]  # the same compression
    assert [s.retrain for s in once] == [False, False, False, False, True]
    assert [s.retrain for s in staged] == [False, True, False, True, True]  # after pruning, k-means, binarization
    only_pruned = allocation_stages({"d": Choice(0.8, None)}, staged=True)
    assert [s.retrain for s in only_pruned] == [True]
    assert "staged" not in BudgetConfig(target_ratio=20).to_dict()
    row = EXPERIMENTS["mixed-20x-staged"]
    assert row.spec()["budget"] == {**EXPERIMENTS["mixed-20x"].spec()["budget"], "staged": True}
    assert row.retrain_epochs == 1
    # the report tests it against its one-shot twin and the twin's other retrainings
    rows = [{"name": n, "method": "mixed", "status": "ok", "model_compression_ratio": 20.0, "compression_ratio": 16.0}
            for n in ("mixed-20x", "mixed-20x-4ep", "mixed-20x-staged")]
    assert {("mixed-20x", "mixed-20x-staged"), ("mixed-20x-4ep", "mixed-20x-staged"),
            ("mixed-20x", "mixed-20x-4ep")} <= set(pairs(rows))


def test_gradual_allocation_reaches_high_sparsities_in_retrained_steps():
    from shrinkformer.compress import BinaryConfig, KMeansConfig, PruneConfig
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.workflow.budget import BudgetConfig, allocation_stages, history_placeholder

    choices = {"a": Choice(0.5, 1), "b": Choice(0.0, 2), "c": Choice(0.0, 1), "d": Choice(0.95, 1), "e": Choice()}
    stages = allocation_stages(choices, gradual=True)
    assert [(s.config, s.include, s.retrain) for s in stages] == [
        (PruneConfig(0.5, 0.5, 1), ["a"], False),  # below 80%: one cut, as without it
        (PruneConfig(0.5, 0.95, 3), ["d"], True),  # 50%, 72.5%, 95%, each retrained
        (KMeansConfig(1), ["a", "d"], False), (KMeansConfig(2), ["b"], False), (BinaryConfig("flex"), ["c"], True)]
    # the dry run's history (which sizes the file) has an entry for every step and retraining
    assert [(h["stage"], h.get("when")) for h in history_placeholder(stages)] == [
        ("uncompressed", None), ("PruneConfig@0.50", "compressed"), ("PruneConfig@0.50", "compressed"),
        ("PruneConfig@0.50", "retrained"), ("PruneConfig@0.72", "compressed"), ("PruneConfig@0.72", "retrained"),
        ("PruneConfig@0.95", "compressed"), ("PruneConfig@0.95", "retrained"), ("KMeansConfig", "compressed"),
        ("KMeansConfig", "compressed"), ("BinaryConfig", "compressed"), ("BinaryConfig", "retrained")]
    assert "gradual" not in BudgetConfig(target_ratio=25).to_dict()
    row = EXPERIMENTS["mixed-25x-gradual"]
    assert row.spec()["budget"] == {**EXPERIMENTS["mixed-25x"].spec()["budget"], "gradual": True}
    assert row.retrain_epochs == 2  # per retraining: 4 retrainings, the 8 epochs of mixed-25x-8ep


def test_gradual_budget_retrains_each_pruning_step_and_keeps_the_budget(tiny_run, multi30k, tmp_path):
    out = tmp_path / "g.sfz"
    assert main(["-q", "compress", str(tiny_run / "model.pt"), "--budget-bytes", "34600", "--gradual",
                 "--retrain-epochs", "1", "--train-limit", "64", "--sensitivity-sentences", "50", "--data-dir",
                 str(multi30k), "--no-test", "-o", str(out)]) == 0
    allocation = json.loads((tmp_path / "g.allocation.json").read_text())
    assert any(row["sparsity"] >= 0.8 for row in allocation["layers"])  # else this test tests nothing
    _, tok, _, meta = load_packed(out)
    assert out.stat().st_size - len(tok.model_proto) <= allocation["budget_bytes"]
    retrained = [h["stage"] for h in meta["history"] if h.get("when") == "retrained"]
    steps = [f"PruneConfig@{s:.2f}" for end in sorted({r["sparsity"] for r in allocation["layers"]
                                                        if r["sparsity"] >= 0.8}) for s in (0.5, (0.5 + end) / 2, end)]
    assert retrained[:-1] == steps  # then one retraining after the quantization


def test_the_budget_floor_names_the_matrices_no_choice_compresses():
    from torch import nn

    from shrinkformer.workflow.budget import uncompressible

    model = nn.Sequential(nn.Linear(4, 4), nn.Embedding(30, 4))
    assert uncompressible(model, {"0": model[0].weight}) == ", and 1.weight: 86% of the parameters"  # 120 of 140
    assert uncompressible(model, {"0": model[0].weight, "1": model[1].weight}) == ""


def test_row_scaled_choices_are_offered_priced_and_taken_where_rows_differ(monkeypatch):
    """With ``row_scale`` the 1- and 2-bit choices come with a float16 scale per row too, 2 bytes a
    row dearer; on a layer whose rows differ 50x in size they cut the estimated damage by a third,
    so a budget that can pay for the scales takes them, and one that cannot does not."""
    from shrinkformer.workflow import sensitivity
    from shrinkformer.workflow.budget import BudgetConfig

    assert BudgetConfig(target_ratio=20).candidates == CHOICES
    on = BudgetConfig(target_ratio=20, row_scale=True)
    assert on.candidates == CHOICES + ROW_SCALED and on.to_dict()["row_scale"] is True
    assert "1b-flex-rs" in on.to_dict()["choices"] and "row_scale" not in BudgetConfig(target_ratio=20).to_dict()
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, generator=g) * torch.logspace(0, 1.7, 64)[:, None]
    weights = {"w": weight}
    flex, scaled = Choice(0.0, 1), Choice(0.0, 1, True)
    costs, masks = sensitivity.price(weights, [Choice(), flex, scaled], False)
    assert packed_layout(weight, scaled)[1]["row_scale"] == 2 * 64
    assert 2 * 64 < costs["w"][scaled] - costs["w"][flex] < 2 * 64 + 120  # and the scales' header entry
    monkeypatch.setattr(sensitivity, "fisher_diagonal", lambda model, w, batches: {"w": torch.ones_like(weight)})
    sens = sensitivity.fisher_scores(None, weights, [], [Choice(), flex, scaled], masks)
    assert sens["w"][scaled] < 0.7 * sens["w"][flex]
    assert solve(costs, sens, costs["w"][scaled]) == {"w": scaled}
    assert solve(costs, sens, costs["w"][scaled] - 1) == {"w": flex}
    # an allocation that took one says so in its file, and reads back the same
    alloc = Allocation([LayerAllocation("w", (64, 32), scaled, costs["w"][scaled], sens["w"][scaled])], 10**6, 0, 2048,
                       "fisher")
    assert alloc.to_dict()["layers"][0]["row_scale"] is True and alloc.to_dict()["layers"][0]["choice"] == "1b-flex-rs"
    assert Allocation.from_dict(alloc.to_dict()).choices() == {"w": scaled}


def test_final_epochs_retrain_the_last_stage_longer():
    """``final_epochs``: the retraining after the quantization gets its own epochs; the pruning
    steps before it keep the row's. In the keys only when set."""
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.workflow.budget import BudgetConfig

    choices = {"a": Choice(0.5, 1), "c": Choice(0.0, 1), "d": Choice(0.95, 1)}
    stages = BudgetConfig(target_ratio=25, gradual=True, final_epochs=6).stages(choices)
    assert [s.epochs for s in stages] == [None, None, None, 6] and stages[-1].retrain
    assert stages[-1].to_dict()["epochs"] == 6 and "epochs" not in stages[1].to_dict()
    assert "final_epochs" not in BudgetConfig(target_ratio=25).to_dict()
    assert [s.epochs for s in BudgetConfig(target_ratio=25, gradual=True).stages(choices)] == [None] * 4
    row = EXPERIMENTS["mixed-25x-gradual-1+6ep"]
    assert row.spec()["budget"] == {**EXPERIMENTS["mixed-25x-gradual"].spec()["budget"], "final_epochs": 6}
    assert row.retrain_epochs == 1
    with pytest.raises(Exception, match="--final-epochs must be >= 1"):
        BudgetConfig(target_ratio=25, final_epochs=0)


def test_plan_only_writes_the_allocation_and_the_run_after_takes_it(tiny_run, multi30k, tmp_path, monkeypatch, capsys):
    from shrinkformer.workflow import budget

    out = tmp_path / "p.sfz"
    args = ["-q", "compress", str(tiny_run / "model.pt"), "--budget-bytes", "34600", "--row-scale",
            "--retrain-epochs", "1", "--train-limit", "64", "--sensitivity-sentences", "50", "--data-dir",
            str(multi30k), "--no-test", "-o", str(out)]
    assert main(args + ["--plan-only"]) == 0
    planned = json.loads((tmp_path / "p.allocation.json").read_text())
    assert planned["planned_only"] and planned["packed_bytes"] <= planned["budget_bytes"] == 34600
    assert (tmp_path / "p.allocation.png").stat().st_size > 0 and not out.exists()
    assert "planned only" in capsys.readouterr().out
    monkeypatch.setattr(budget, "plan_allocation", lambda *a, **k: pytest.fail("searched again"))
    assert main(args) == 0
    done = json.loads((tmp_path / "p.allocation.json").read_text())
    assert [r["choice"] for r in done["layers"]] == [r["choice"] for r in planned["layers"]]
    assert "planned_only" not in done and out.exists()


def test_binary_steps_binarize_the_most_sensitive_group_first_each_retrained():
    """``binary_steps``: the BS-Flex layers in near-equal groups, by falling sensitivity, each its own
    retrained stage (the last with the final epochs); pruning and k-means as without it; the key only
    when set; a bad count refused."""
    from shrinkformer.compress import BinaryConfig
    from shrinkformer.experiments.grid import EXPERIMENTS
    from shrinkformer.workflow.budget import BudgetConfig, binary_groups

    flex = Choice(0.0, 1)
    choices = {"a": flex, "b": flex, "c": Choice(0.95, 1), "d": flex, "e": flex, "f": flex}
    sens = {"a": 0.1, "b": 0.5, "d": 0.3, "e": 0.9, "f": 0.2}
    assert binary_groups(["a", "b", "d", "e", "f"], 3, sens) == [["b", "e"], ["d", "f"], ["a"]]
    assert binary_groups(["a", "b"], 3, {}) == [["a"], ["b"]]  # fewer layers than steps: one each, model order
    stages = BudgetConfig(target_ratio=25, binary_steps=3, final_epochs=4).stages(choices, sens)
    binaries = [s for s in stages if isinstance(s.config, BinaryConfig)]
    assert [s.include for s in binaries] == [["b", "e"], ["d", "f"], ["a"]]
    assert [s.retrain for s in binaries] == [True] * 3 and [s.epochs for s in binaries] == [None, None, 4]
    once = BudgetConfig(target_ratio=25).stages(choices)
    assert [s.include for s in stages if not isinstance(s.config, BinaryConfig)] == \
        [s.include for s in once if not isinstance(s.config, BinaryConfig)]
    assert "binary_steps" not in BudgetConfig(target_ratio=25).to_dict()
    row = EXPERIMENTS["mixed-25x-gradual-binary3-1+4ep"]
    assert row.spec()["budget"] == {**EXPERIMENTS["mixed-25x-gradual"].spec()["budget"], "final_epochs": 4,
                                    "binary_steps": 3}
    with pytest.raises(Exception, match="--binary-steps must be >= 1"):
        BudgetConfig(target_ratio=25, binary_steps=0)


def test_binary_steps_end_where_binarizing_at_once_ends(tiny_run):
    """Stepped binarization changes when layers are binarized, not what they become: without
    retraining, the stages leave the same codecs, and so the same packed size, as one step."""
    from shrinkformer.loading import load_adapter
    from shrinkformer.workflow.budget import BudgetConfig, compressed_copy

    adapter = load_adapter(tiny_run / "best.pt", training=True)
    names = list(adapter.candidates())
    choices = {n: Choice(0.0, 1) if i % 3 else Choice(0.5, 4) for i, n in enumerate(names)}
    sens = {n: float(i % 5) for i, n in enumerate(names)}
    once, _ = compressed_copy(adapter.model, choices, BudgetConfig(target_ratio=4))
    stepped, stages = compressed_copy(adapter.model, choices, BudgetConfig(target_ratio=4, binary_steps=3))
    assert sum(s.retrain for s in stages) == 3
    a, b = once.state_dict(), stepped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
