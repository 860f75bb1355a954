import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from shrinkformer.adapters.transformer import TransformerAdapter
from shrinkformer.cli import main
from shrinkformer.compress import KMeansConfig, PruneConfig, compress
from shrinkformer.pack.format import load_packed
from shrinkformer.checkpoint import load_checkpoint, load_model
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
    sizes = r["sizes"]
    assert sizes["model_compression_ratio"] == pytest.approx(
        4 * sizes["params"] / (out.stat().st_size - sizes["tokenizer_bytes"]), rel=1e-3)
    assert [h["stage"] for h in r["history"]][1:] == ["PruneConfig@0.30"] * 2 + ["PruneConfig@0.50"] * 2 + ["KMeansConfig"] * 2
    assert 0 < r["params_compressed_share"] < 1 and "bleu" in r
    capsys.readouterr()
    _, _, packed = load_packed(out, training=True)[:3]
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
    from shrinkformer.pack.format import write_packed
    write_packed(model.eval(), cfg, tok, out)
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
    a, b = (load_packed(tmp_path / f"{d}.sfz", training=True)[2] for d in ("0", "0.7"))
    assert not torch.equal(a.encoder.layers[0].self_attn.q_proj.weight, b.encoder.layers[0].self_attn.q_proj.weight)


def compress_cmd(checkpoint, data, out, *extra, quiet=True):
    return [sys.executable, "-m", "shrinkformer", *(["-q"] if quiet else []), "compress", str(checkpoint),
            "--method", "prune+kmeans", "--sparsity", "0.3:0.5", "--steps", "2", "--bits", "3",
            "--save-every", "3", "--no-test", "--data-dir", str(data), *COMMON, "-o", str(out), *extra]


def packed_contents(path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_killed_retraining_resumes_to_the_same_packed_file(tiny_run, multi30k, tmp_path):
    def command(out, quiet=True):
        return compress_cmd(tiny_run / "model.pt", multi30k, out, quiet=quiet)

    assert_resumes_mid_step(command, tmp_path)


def assert_resumes_mid_step(command, tmp_path):
    """``command(out, quiet)`` compresses with prune (two steps) then k-means. Killed inside the
    third step, resuming must replay both pruning steps' structure, the k-means stage's input and
    the training loop's snapshot, and pack what an uninterrupted run packs."""
    straight, killed = tmp_path / "straight.sfz", tmp_path / "killed.sfz"
    subprocess.run(command(straight), check=True, capture_output=True, timeout=300)
    assert not (tmp_path / "straight.sfz.work").exists(), "a finished run cleans up its work directory"
    work = tmp_path / "killed.sfz.work"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "step2" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(work / "step2" / "last.pt", require=("model", "progress"))["progress"]
    assert at_kill["batch"] > 0 and not at_kill["finished"], "the kill must land inside the k-means retraining"
    assert not killed.exists()

    resumed = subprocess.run(command(killed, quiet=False), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 of 3 steps done" in resumed.stderr and f"step {at_kill['step']}" in resumed.stderr
    # safetensors writes its metadata map in a per-process order, so compare contents, not bytes.
    (a, meta_a), (b, meta_b) = (packed_contents(p) for p in (straight, killed))
    assert meta_a == meta_b and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists()


@pytest.mark.parametrize("content, message", [
    ({"key": "another run"}, "holds the state of another retraining run"),
    (b"not a torch file", "unreadable retraining state"),
], ids=["other-run", "garbage"])
def test_foreign_or_damaged_work_directory_is_a_one_line_error(tiny_run, multi30k, tmp_path, content, message):
    work, out = tmp_path / "w", tmp_path / "m.sfz"
    work.mkdir()
    if isinstance(content, bytes):
        (work / "state.pt").write_bytes(content)
    else:
        torch.save(content, work / "state.pt")
    result = run_cli("-q", "compress", str(tiny_run / "model.pt"), "--method", "kmeans", "--bits", "2", "--no-test",
                     "--retrain-epochs", "0", "--data-dir", str(multi30k), "--work-dir", str(work), "-o", str(out))
    assert result.returncode != 0 and message in result.stderr and str(work) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_run_killed_in_its_first_step_is_not_resumed_with_other_settings(tiny_run, multi30k, tmp_path):
    """Before the first step finishes there is no ``state.pt``, only the loop's ``last.pt``: another
    run's settings must not silently continue it."""
    def command(bits):
        return [sys.executable, "-m", "shrinkformer", "-q", "compress", str(tiny_run / "model.pt"),
                "--method", "kmeans", "--bits", bits, "--save-every", "3", "--no-test", "--data-dir", str(multi30k),
                *COMMON, "--work-dir", str(work), "-o", str(out)]

    work, out = tmp_path / "w", tmp_path / "m.sfz"
    proc = subprocess.Popen(command("3"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "step0" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (work / "step0" / "last.pt").exists() and not (work / "state.pt").exists()
    other = subprocess.run(command("2"), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "holds the state of another retraining run" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and not out.exists()
    same = subprocess.run(command("3")[:3] + command("3")[4:], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "resuming this step" in same.stderr, same.stderr[-2000:]


def test_two_process_retraining_under_torchrun(tiny_run, multi30k, tmp_path):
    out, report = tmp_path / "ddp.sfz", tmp_path / "r.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "shrinkformer", "-q", "compress", str(tiny_run / "model.pt"), "--method", "bsflex",
           "--scope", "self-attention", "--no-test", "--data-dir", str(multi30k), *COMMON, "-o", str(out),
           "--report", str(report)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["world_size"] == 2 and [h["when"] for h in r["history"][1:]] == ["compressed", "retrained"]
    _, _, packed = load_packed(out, training=True)[:3]
    weights = [m.codec() for m in packed.modules() if hasattr(m, "codec")]
    assert len(weights) == len(r["modules"]) and all(w.unique().numel() == 2 for w in weights)


def test_run_killed_after_its_last_step_packs_the_retrained_model(tiny_run, multi30k, tmp_path, monkeypatch):
    """All steps done, the packed file not yet written: the resumed run must rebuild the k-means
    stage from the pruned model it began from (globally pruned layers change their survivor counts
    while retraining) and pack the saved weights, without retraining."""
    from shrinkformer.adapters.base import ModelAdapter
    import shrinkformer.workflow.retrain as retrain_module
    from shrinkformer.compress import PruneConfig
    from shrinkformer.workflow.pipeline import compress_model
    from shrinkformer.workflow.retrain import RetrainConfig, Stage

    def run(out, work=None):
        cfg, tok, model = load_model(tiny_run / "model.pt")
        cfg.data.data_dir = str(multi30k)
        stages = [Stage(PruneConfig(0.3, 0.5, 2, scope="global")), Stage(KMeansConfig(3))]
        return compress_model(TransformerAdapter(model, tok, cfg), stages, RetrainConfig(epochs=1), out, train_limit=200,
                              work_dir=work, test_splits=[])

    straight = run(tmp_path / "straight.sfz")
    work = tmp_path / "work"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ModelAdapter, "write_packed", crash)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "resumed.sfz", work)
    assert torch.load(work / "state.pt", weights_only=True)["done"] == 3 and (work / "stage1.pt").exists()
    with monkeypatch.context() as m:
        m.setattr(retrain_module, "fit", lambda *a, **k: pytest.fail("finished steps must not retrain"))
        resumed = run(tmp_path / "resumed.sfz", work)
    assert resumed.outcome.history == straight.outcome.history and resumed.outcome.modules == straight.outcome.modules
    assert resumed.sizes == straight.sizes and not work.exists()
    (a, meta_a), (b, meta_b) = (packed_contents(tmp_path / f"{n}.sfz") for n in ("straight", "resumed"))
    assert meta_a == meta_b and all(torch.equal(a[k], b[k]) for k in a)


def test_control_stage_retrains_without_compressing(tiny_run, multi30k, tmp_path):
    from shrinkformer.compress import codecs
    from shrinkformer.workflow.pipeline import compress_model
    from shrinkformer.workflow.retrain import RetrainConfig, Stage

    cfg, tok, model = load_model(tiny_run / "model.pt")
    cfg.data.data_dir = str(multi30k)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress_model(TransformerAdapter(model, tok, cfg), [Stage(None)], RetrainConfig(epochs=1), tmp_path / "c.sfz",
                            train_limit=200, test_splits=["test_2016_flickr", "test_2017_mscoco"])
    assert not codecs(model) and result.outcome.modules == [] and result.outcome.compressed_params == 0
    assert [h.get("when") for h in result.outcome.history] == [None, "compressed", "retrained"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "it must have trained"
    assert list(result.tests) == ["test_2016_flickr", "test_2017_mscoco"]
    assert [len(r.hypotheses) for r in result.tests.values()] == [1000, 461]
    assert result.sizes.scope_params == 0 and result.sizes.scope_compression_ratio is None


def test_packed_layers_record_the_method_and_scope_that_made_them(tiny_run, multi30k, tmp_path):
    out = tmp_path / "m.sfz"
    assert main(["-q", "compress", str(tiny_run / "model.pt"), "--method", "prune+kmeans", "--sparsity", "0.5",
                 "--bits", "2", "--scope", "ffn", "--exclude", "decoder.*", "--retrain-epochs", "0", "--no-test",
                 "--data-dir", str(multi30k), "-o", str(out)]) == 0
    _, meta = packed_contents(out)
    layers = json.loads(meta["layers"])
    assert sorted(layers) == ["encoder.layers.0.ffn.fc1", "encoder.layers.0.ffn.fc2", "encoder.layers.1.ffn.fc1",
                              "encoder.layers.1.ffn.fc2"]
    made_by = layers["encoder.layers.0.ffn.fc1"]["made_by"]
    assert [m["config"] for m in made_by] == [
        {"method": "prune", "start": 0.5, "end": 0.5, "steps": 1, "scope": "layer"},
        {"method": "kmeans", "bits": 2, "init": "linear"}]
    assert made_by[0]["scopes"] == ["ffn"] and made_by[0]["exclude"] == ["decoder.*"]
    _, _, model = load_packed(out, training=True)[:3]  # and it survives loading
    assert model.encoder.layers[0].ffn.fc1.codec.made_by == made_by


@pytest.mark.parametrize("args, message", [
    (["--method", "bsflex", "--bits", "2"], "--bits does not apply to --method bsflex"),
    (["--method", "kmeans", "--sparsity", "0.5"], "--sparsity does not apply to --method kmeans"),
    (["--method", "prune", "--init", "density"], "--init does not apply to --method prune"),
    (["--method", "kmeans", "--flex"], "--flex applies to a budgeted allocation"),
    (["--method", "kmeans", "--staged"], "--staged applies to a budgeted allocation"),
    (["--method", "kmeans", "--gradual"], "--gradual applies to a budgeted allocation"),
    (["--method", "kmeans", "--final-epochs", "4"], "--final-epochs applies to a budgeted allocation"),
    (["--method", "kmeans", "--plan-only"], "--plan-only applies to a budgeted allocation"),
    (["--method", "kmeans", "--binary-steps", "3"], "--binary-steps applies to a budgeted allocation"),
    (["--target-ratio", "20", "--binary-steps", "0"], "--binary-steps must be >= 1, got 0"),
    (["--method", "kmeans", "--include", "encoder.nothing.*"], "--include 'encoder.nothing.*' matches no module"),
    (["--method", "kmeans", "--scope", "ffn", "--exclude", "decoder.nothing"],
     "--exclude 'decoder.nothing' matches no module"),
], ids=["bits-bsflex", "sparsity-kmeans", "init-prune", "flex-method", "staged-method", "gradual-method", "final-epochs-method", "plan-only-method", "binary-steps-method", "binary-steps-zero", "include-nothing", "exclude-nothing"])
def test_options_that_do_not_apply_or_match_nothing_are_errors(tiny_run, multi30k, tmp_path, args, message):
    out = tmp_path / "m.sfz"
    result = run_cli("compress", str(tiny_run / "model.pt"), *args, "--retrain-epochs", "1", "--no-test",
                     "--data-dir", str(multi30k), "-o", str(out))
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "m.sfz.work").exists()


def test_compress_failing_before_any_work_leaves_no_work_directory(tiny_run, tmp_path):
    out = tmp_path / "m.sfz"
    result = run_cli("compress", str(tiny_run / "model.pt"), "--method", "kmeans", "--no-test",
                     "--data-dir", str(tmp_path / "no-such-corpus"), "-o", str(out))
    assert result.returncode == 1 and "no-such-corpus" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "m.sfz.work").exists()


def test_stages_can_share_one_retraining(tiny_run, multi30k, tmp_path):
    """BS-Flex on every layer, then k-means on the embeddings (the tied output projection too), then
    a single retraining: the whole-model rows' shape."""
    from shrinkformer.compress import BinaryConfig, codecs
    from shrinkformer.compress.base import CompressedEmbedding
    from shrinkformer.workflow.pipeline import compress_model
    from shrinkformer.workflow.retrain import RetrainConfig, Stage

    cfg, tok, model = load_model(tiny_run / "model.pt")
    cfg.data.data_dir = str(multi30k)
    stages = [Stage(BinaryConfig("flex"), ["all"], retrain=False), Stage(KMeansConfig(4), ["embeddings"])]
    result = compress_model(TransformerAdapter(model, tok, cfg), stages, RetrainConfig(epochs=1), tmp_path / "m.sfz", train_limit=200,
                            test_splits=[])
    assert [(h["stage"], h.get("when")) for h in result.outcome.history[1:]] == [
        ("BinaryConfig", "compressed"), ("KMeansConfig", "compressed"), ("KMeansConfig", "retrained")]
    assert isinstance(model.embed_tokens, CompressedEmbedding) and "embed_tokens" in result.outcome.modules
    assert len(codecs(model)) == len(result.outcome.modules) and result.outcome.share > 0.95  # all but biases, norms
    _, _, packed = load_packed(tmp_path / "m.sfz")[:3]
    src, tgt = torch.randint(4, 50, (2, 6)), torch.randint(4, 50, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(packed(src, tgt)[0], model.eval()(src, tgt)[0], rtol=1e-4, atol=1e-5)


def test_translate_packed_and_dense_forms_agree(tiny_run, tmp_path):
    cfg, tok, model = load_model(tiny_run / "model.pt")
    compress(model, KMeansConfig(4), "all")
    compress(model, KMeansConfig(4), "embeddings")
    out = tmp_path / "k.sfz"
    from shrinkformer.pack.format import write_packed
    write_packed(model.eval(), cfg, tok, out)
    lines = "A man in a red shirt.\nTwo children play football on the beach.\n"
    packed = run_cli("translate", str(out), "--beam", "2", stdin=lines)
    dense = run_cli("translate", str(out), "--beam", "2", "--dense", stdin=lines)
    assert packed.returncode == dense.returncode == 0 and packed.stdout == dense.stdout
    assert len(packed.stdout.splitlines()) == 2


def test_keep_best_undoes_a_retraining_that_lowers_validation_bleu(tiny_run, multi30k, tmp_path, monkeypatch):
    """With --keep-best a step whose retraining lowers the greedy validation BLEU keeps the model it
    started retraining from (the history says so); without it, the damage stays."""
    import shrinkformer.workflow.retrain as retrain_module

    def wrecks(adapter, *args, **kwargs):  # a retraining that can only hurt
        with torch.no_grad():
            for p in adapter.model.parameters():
                p.mul_(0.0)
        return 0.0

    monkeypatch.setattr(retrain_module, "fit_step", wrecks)
    base = ["-q", "compress", str(tiny_run / "model.pt"), "--method", "kmeans", "--bits", "4", "--no-test",
            "--data-dir", str(multi30k), "--train-limit", "50", "--threads", "1"]
    assert main([*base, "--retrain-epochs", "0", "-o", str(tmp_path / "untrained.sfz")]) == 0
    for flag in ("--keep-best", None):
        name = "kept" if flag else "wrecked"
        assert main([*base, *([flag] if flag else []), "--retrain-epochs", "1", "-o", str(tmp_path / f"{name}.sfz"),
                     "--report", str(tmp_path / f"{name}.json")]) == 0
    kept, wrecked = (json.loads((tmp_path / f"{n}.json").read_text())["history"] for n in ("kept", "wrecked"))
    assert kept[1]["valid_bleu"] > 0 and kept[2]["kept"] == "compressed"
    assert kept[2]["valid_bleu"] == kept[1]["valid_bleu"] > kept[2]["retrained_bleu"] == wrecked[2]["valid_bleu"]
    (a, _), (b, _) = (packed_contents(tmp_path / f"{n}.sfz") for n in ("untrained", "kept"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_with_its_own_epochs_retrains_that_long(tiny_run, multi30k, tmp_path, monkeypatch):
    """``Stage.epochs`` (the budget's ``final_epochs``) overrides the retraining's epochs for that
    stage only, and changes the work directory's key."""
    from shrinkformer.workflow import retrain as rt
    from shrinkformer.workflow.retrain import RetrainConfig, Stage, run_key

    cfg, tok, model = load_model(tiny_run / "model.pt")
    cfg.data.data_dir = str(multi30k)
    seen = []
    monkeypatch.setattr(rt, "fit_step", lambda adapter, run_cfg, *a, **k: seen.append(run_cfg.train.max_epochs) or 0.0)
    stages = [Stage(PruneConfig(0.5, 0.5, 1), ["all"]), Stage(KMeansConfig(2), ["all"], epochs=3)]
    adapter = TransformerAdapter(model, tok, cfg)
    rt.retrain(adapter, stages, RetrainConfig(epochs=1), train_limit=50)
    assert seen == [1, 3]
    plain = [Stage(PruneConfig(0.5, 0.5, 1), ["all"]), Stage(KMeansConfig(2), ["all"])]
    assert run_key(adapter, stages, RetrainConfig(epochs=1), 50) != run_key(adapter, plain, RetrainConfig(epochs=1), 50)
