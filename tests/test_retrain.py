import json

import pytest
import torch

from shrinkformer.cli import main
from shrinkformer.compress import KMeansConfig, compress
from shrinkformer.pack.format import load_packed
from shrinkformer.train.checkpoint import load_model
from shrinkformer.translate import Translator

from .conftest import run_cli

COMMON = ["--retrain-epochs", "1", "--train-limit", "300", "--threads", "1"]


def test_compress_retrain_pack_and_translate(tiny_run, multi30k, tmp_path, capsys):
    out, report = tmp_path / "m.sfz", tmp_path / "r.json"
    assert main(["-q", "compress", str(tiny_run / "model.pt"), "--method", "prune+kmeans", "--sparsity", "0.3:0.5",
                 "--steps", "2", "--bits", "3", "--data-dir", str(multi30k), *COMMON, "-o", str(out),
                 "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["packed_bytes"] == out.stat().st_size
    assert r["compression_ratio"] == pytest.approx(r["fp32_bytes"] / r["packed_bytes"], rel=1e-3)
    assert [h["stage"] for h in r["history"]][1:] == ["PruneConfig@0.30"] * 2 + ["PruneConfig@0.50"] * 2 + ["KMeansConfig"] * 2
    assert 0 < r["params_compressed_share"] < 1 and "bleu" in r
    capsys.readouterr()
    _, _, packed = load_packed(out)[:3]
    for codec in [m.codec for m in packed.modules() if hasattr(m, "codec")]:
        w = codec()
        assert abs((w == 0).float().mean().item() - 0.5) < 0.01 and w[w != 0].unique().numel() <= 8
    assert main(["-q", "evaluate", str(out), "--data-dir", str(multi30k), "--split", "test_2017_mscoco",
                 "--beam", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 461


def test_packed_file_translates_like_the_in_memory_model(tiny_run, multi30k, tmp_path):
    cfg, tok, model = load_model(tiny_run / "model.pt")
    compress(model, KMeansConfig(2), "all")
    out = tmp_path / "k.sfz"
    from shrinkformer.pack.format import save_packed
    save_packed(model.eval(), cfg, tok, out)
    lines = ["A man in a red shirt.", "Two children play football on the beach."]
    expected = Translator(model, tok).translate(lines)
    result = run_cli("translate", str(out), stdin="\n".join(lines) + "\n")
    assert result.returncode == 0 and result.stdout.splitlines() == expected


@pytest.mark.parametrize("args, message", [
    (["--method", "kmeans", "--bits", "0"], "bits must be in 1..8, got 0"),
    (["--method", "kmeans", "--bits", "9"], "bits must be in 1..8, got 9"),
    (["--method", "prune", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--method", "prune", "--sparsity", "0.3:0.5", "--steps", "0"], "pruning steps must be >= 1"),
    (["--method", "prune", "--sparsity", "lots"], "--sparsity must be S or START:END"),
    (["--method", "quantum"], "invalid choice: 'quantum'"),
    (["--method", "kmeans", "--scope", "mlp"], "unknown scope 'mlp'"),
], ids=["bits0", "bits9", "sparsity1", "steps0", "sparsity-text", "method", "scope"])
def test_bad_compress_parameters_exit_2_and_write_nothing(tiny_run, tmp_path, args, message):
    out = tmp_path / "m.sfz"
    result = run_cli("compress", str(tiny_run / "model.pt"), *args, "--retrain-epochs", "0", "--no-test",
                     "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and not out.exists()


def test_distillation_runs_and_changes_training(tiny_run, multi30k, tmp_path):
    reports = []
    for distill in ("0", "0.7"):
        report = tmp_path / f"r{distill}.json"
        assert main(["-q", "compress", str(tiny_run / "model.pt"), "--method", "bsflex", "--scope", "self-attention",
                     "--distill", distill, "--no-test", "--data-dir", str(multi30k), *COMMON,
                     "-o", str(tmp_path / f"{distill}.sfz"), "--report", str(report)]) == 0
        reports.append(json.loads(report.read_text()))
    a, b = (load_packed(tmp_path / f"{d}.sfz")[2] for d in ("0", "0.7"))
    assert not torch.equal(a.encoder.layers[0].self_attn.q_proj.weight, b.encoder.layers[0].self_attn.q_proj.weight)
