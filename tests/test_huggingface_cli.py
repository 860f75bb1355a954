"""A Hugging Face MarianMT model through the command line, offline: a tiny model with a real
MarianTokenizer (SentencePiece models trained on a Multi30k subset), saved with save_pretrained,
compressed with retraining, translated, evaluated, exported back and reloaded by transformers, and
converted by CTranslate2's own Hugging Face converter."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import torch

from shrinkformer.cli import main

from .conftest import run_cli

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

LINES = ["A man in a red shirt.", "Two children play football on the beach.", "A dog runs."]


def _lines(multi30k: Path, lang: str, n: int) -> list[str]:
    with gzip.open(multi30k / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory, multi30k) -> Path:
    out = tmp_path_factory.mktemp("marian")
    work = tmp_path_factory.mktemp("spm")
    pieces: list[str] = []
    for lang, name in (("en", "source"), ("de", "target")):
        spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines(multi30k, lang, 2000)),
                                       model_prefix=str(work / name), vocab_size=300, bos_id=-1, eos_id=-1,
                                       unk_id=0, minloglevel=2)
        (out / f"{name}.spm").write_bytes((work / f"{name}.model").read_bytes())
        proc = spm.SentencePieceProcessor(model_file=str(work / f"{name}.model"))
        pieces += [proc.id_to_piece(i) for i in range(1, proc.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = transformers.MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"),
                                       source_lang="en", target_lang="de")
    torch.manual_seed(0)
    cfg = transformers.MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=vocab["<pad>"],
                                    eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=None,
                                    max_length=16, num_beams=2, dropout=0.0)
    model = transformers.MarianMTModel(cfg).eval()
    model.generation_config.max_length = 16
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def generate(model_dir: Path, lines: list[str]) -> list[list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ids = model.generate(**tok(lines, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                             max_new_tokens=16)
    return [[t for t in row.tolist() if t != tok.pad_token_id] for row in ids]


def test_marian_round_trip_through_the_command_line(tiny_marian, multi30k, tmp_path, capsys):
    packed, report = tmp_path / "m.sfz", tmp_path / "r.json"
    assert main(["-q", "compress", str(tiny_marian), "--method", "kmeans", "--bits", "4", "--retrain-epochs", "1",
                 "--train-limit", "64", "--data-dir", str(multi30k), "--no-test", "-o", str(packed),
                 "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert len(r["modules"]) == 2 * 6 + 2 * 10 and [h.get("when") for h in r["history"]] == [None, "compressed",
                                                                                            "retrained"]
    assert r["model_compression_ratio"] > 1 and r["packed_bytes"] == packed.stat().st_size
    capsys.readouterr()

    # translate offline from the packed file, packed and dense forms alike
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n")
    outs = []
    for extra in ([], ["--dense"]):
        assert main(["translate", str(packed), "-i", str(tmp_path / "in.txt"), "--beam", "1", *extra]) == 0
        outs.append(capsys.readouterr().out.splitlines())
    assert outs[0] == outs[1] and len(outs[0]) == len(LINES)

    assert main(["evaluate", str(packed), "--data-dir", str(multi30k), "--test-sentences", "20", "--beam", "1",
                 "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["sentences"] == 20 and scores["beam_size"] == 1 and "bleu" in scores

    # back out as a Hugging Face directory: transformers loads it and generates what the packed model does
    exported = tmp_path / "hf"
    assert main(["export", str(packed), "--format", "hf", "-o", str(exported)]) == 0
    from shrinkformer.huggingface.model import load_packed

    hf = load_packed(packed, training=True)
    tok = hf.tokenizer
    with torch.no_grad():
        want = hf.model.generate(**tok(LINES, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                                 max_new_tokens=16)
    want = [[t for t in row.tolist() if t != tok.pad_token_id] for row in want]
    assert generate(exported, LINES) == want
    state = transformers.AutoModelForSeq2SeqLM.from_pretrained(exported).state_dict()
    fc1 = state["model.encoder.layers.0.fc1.weight"]
    assert fc1.unique().numel() <= 16  # the 4-bit weights went out as they are

    # and through CTranslate2's own Hugging Face converter: the same tokens in float32
    ctranslate2 = pytest.importorskip("ctranslate2")
    ct2_dir = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(exported)).convert(str(ct2_dir), quantization="float32")
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu")
    sources = [tok.convert_ids_to_tokens(tok(line).input_ids) for line in LINES]
    results = translator.translate_batch(sources, beam_size=1, max_decoding_length=16)
    got = [tok.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
    assert got == [[t for t in ids if t != tok.eos_token_id] for ids in want]


def test_hugging_face_bad_input_is_one_line(tiny_marian, multi30k, tmp_path):
    not_model = tmp_path / "empty"
    not_model.mkdir()
    gpt = tmp_path / "gpt"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50)).save_pretrained(gpt)
    existing = tmp_path / "exists"
    existing.mkdir()
    t5 = tmp_path / "t5"  # T5 names its attention SelfAttention, inside blocks
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(json.loads((tiny_marian / "vocab.json").read_text())), d_model=8, d_kv=4, d_ff=16, num_layers=1,
        num_heads=2, decoder_start_token_id=0)).save_pretrained(t5)
    transformers.AutoTokenizer.from_pretrained(tiny_marian).save_pretrained(t5)
    cases = [
        (["compress", str(not_model), "--method", "kmeans"], "not a model directory (no config.json"),
        (["compress", str(gpt), "--method", "kmeans"], "model type 'gpt2' is not a sequence-to-sequence"),
        (["export", str(tiny_marian), "--format", "hf", "-o", str(existing)], "exists; choose a new directory"),
        (["export", str(tiny_marian), "-o", str(tmp_path / "ct2")], "through its own converter: export --format hf"),
        (["attention", str(t5), "-o", str(tmp_path / "att"), "--data-dir", str(multi30k)],
         "the attention analysis needs encoder and decoder layers with a self_attn module"),
    ]
    for args, message in cases:
        result = run_cli(*args, "--data-dir", str(multi30k), "-o", str(tmp_path / "out.sfz")) \
            if args[0] == "compress" else run_cli(*args)
        assert result.returncode != 0, args
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.sfz").exists() and list(existing.iterdir()) == []


def marian_compress(model_dir, data, out, quiet=True):
    return [sys.executable, "-m", "shrinkformer", *(["-q"] if quiet else []), "compress", str(model_dir),
            "--method", "prune+kmeans", "--sparsity", "0.3:0.5", "--steps", "2", "--bits", "3", "--scope", "ffn",
            "--save-every", "3", "--retrain-epochs", "1", "--retrain-batch-tokens", "256", "--train-limit", "200",
            "--threads", "1", "--no-test", "--data-dir", str(data), "-o", str(out)]


def test_killed_marian_compression_resumes_mid_step_to_the_same_packed_file(tiny_marian, multi30k, tmp_path):
    """The one retraining loop serves Hugging Face models too: killed inside a step's training, a
    run resumes from that step's snapshot and packs what an uninterrupted run packs."""
    from .test_retrain import assert_resumes_mid_step

    assert_resumes_mid_step(lambda out, quiet=True: marian_compress(tiny_marian, multi30k, out, quiet=quiet), tmp_path)


def test_tied_marian_embeddings_are_compressed_once_and_translate_alike_everywhere(tiny_marian, multi30k, tmp_path):
    """The shared table (encoder and decoder embeddings, the output layer) is one codec: packed
    once, retrained through all three uses, and the packed file, its training form and its
    export translate alike; the export has its ties back."""
    from shrinkformer.huggingface.model import TiedProjection, load_packed

    packed, report, exported = tmp_path / "m.sfz", tmp_path / "r.json", tmp_path / "exp"
    args = ["-q", "compress", str(tiny_marian), "--method", "kmeans", "--bits", "4", "--scope", "all", "--scope",
            "embeddings", "--retrain-epochs", "1", "--train-limit", "64", "--threads", "1", "--data-dir",
            str(multi30k), "--no-test"]
    assert main([*args, "-o", str(packed), "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert [m for m in r["modules"] if "embed" in m or "shared" in m] == ["model.shared"]  # no position table
    assert main([*args[:9], *args[11:], "-o", str(tmp_path / "linear.sfz")]) == 0
    assert packed.stat().st_size < (tmp_path / "linear.sfz").stat().st_size
    inference, training = load_packed(packed), load_packed(packed, training=True)
    for hf in (inference, training):
        core = hf.model.model
        assert core.encoder.embed_tokens is core.shared is core.decoder.embed_tokens
        assert isinstance(hf.model.lm_head, TiedProjection)
    assert main(["export", str(packed), "--format", "hf", "-o", str(exported)]) == 0
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(exported).eval()
    assert back.lm_head.weight.data_ptr() == back.model.shared.weight.data_ptr()
    want = [[t for t in row if t != inference.tokenizer.pad_token_id] for row in generate(exported, LINES)]

    def ids(model):
        with torch.no_grad():
            out = model.generate(**inference.tokenizer(LINES, return_tensors="pt", padding=True), num_beams=1,
                                 do_sample=False, max_new_tokens=16)
        return [[t for t in row.tolist() if t != inference.tokenizer.pad_token_id] for row in out]

    assert ids(inference.model) == ids(training.model) == want


def test_distillation_changes_marian_retraining(tiny_marian, multi30k, tmp_path, monkeypatch):
    """``--distill`` and ``--temperature`` reach a Hugging Face model's retraining: the loss mixes in
    the KL term to the uncompressed model (the loop's own), so the weights it ends with differ."""
    from shrinkformer.huggingface.model import load_packed
    from shrinkformer.train import loop

    seen = []
    real = loop.distillation_loss

    def spy(logits, teacher_logits, target, temperature, pad):
        seen.append((temperature, pad))
        return real(logits, teacher_logits, target, temperature, pad)

    monkeypatch.setattr(loop, "distillation_loss", spy)
    common = ["-q", "compress", str(tiny_marian), "--method", "kmeans", "--bits", "2", "--retrain-epochs", "1",
              "--train-limit", "64", "--threads", "1", "--data-dir", str(multi30k), "--no-test"]
    assert main([*common, "-o", str(tmp_path / "plain.sfz")]) == 0
    assert seen == []
    assert main([*common, "--distill", "0.5", "--temperature", "2", "-o", str(tmp_path / "distilled.sfz")]) == 0
    pad = transformers.AutoTokenizer.from_pretrained(tiny_marian).pad_token_id
    assert seen and set(seen) == {(2.0, pad)}
    a, b = (load_packed(tmp_path / f"{n}.sfz", training=True).model.state_dict() for n in ("plain", "distilled"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_model_without_encoder_and_decoder_layers_cannot_be_scoped():
    from shrinkformer.errors import UsageError
    from shrinkformer.huggingface.model import check_scopable

    with pytest.raises(UsageError, match="no Linear layers under encoder/decoder modules"):
        check_scopable(torch.nn.Sequential(torch.nn.Linear(4, 4)), "some/model")


def test_attention_analysis_of_a_marian_model(tiny_marian, multi30k, tmp_path, capsys):
    from shrinkformer.experiments.attention import decode_with
    from shrinkformer.huggingface.attention import HFProbe
    from shrinkformer.huggingface.model import load_pretrained

    out = tmp_path / "att"
    assert main(["attention", str(tiny_marian), "--data-dir", str(multi30k), "--sentences", "6",
                 "--test-sentences", "6", "--k", "4,16", "--beam", "1", "-o", str(out)]) == 0
    r = json.loads((out / "attention.json").read_text())
    layers = set(r["levels"]["kmeans"]["16"]["layers"])
    assert layers == {"encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"}
    assert r["test_sentences"] == 6 and r["beam"] == 1 and (out / "attention_hist.png").stat().st_size > 0

    hf = load_pretrained(tiny_marian)
    probe = HFProbe(hf, beam_size=1)
    sources, targets = _lines(multi30k, "en", 4), _lines(multi30k, "de", 4)
    rec = probe.record(sources, targets)
    for name, maps in rec.layers.items():
        for m in maps:  # real rows only, each a distribution; the decoder's causal
            assert torch.allclose(m.sum(-1), torch.ones(m.shape[:2]), atol=1e-5)
            if name.startswith("decoder"):
                assert torch.equal(m.triu(1), torch.zeros_like(m))
    # Our attention function is eager attention: with nothing set, generate() is unchanged ...
    plain = [[t for t in row] for row in generate(tiny_marian, sources)]
    with torch.no_grad():
        ids = hf.model.generate(**hf.tokenizer(sources, return_tensors="pt", padding=True), num_beams=1,
                                do_sample=False, max_new_tokens=16)
    assert [[t for t in row.tolist() if t != hf.tokenizer.pad_token_id] for row in ids] == plain
    # ... and a transform set on the self-attention modules is applied there and only there.
    seen = []
    for name, module in probe.self_attention().items():
        module.prob_transform = lambda p, name=name: seen.append(name) or p
    probe.translate(sources[:1])
    assert set(seen) == set(probe.self_attention())
    assert decode_with(probe, None, sources) == probe.translate(sources)


def test_reproduce_from_a_marian_baseline(tiny_marian, multi30k, tmp_path, monkeypatch, capsys):
    from shrinkformer.experiments import grid

    tiny = grid.SweepPreset("hf-test", "tiny", rows=("baseline", "control", "kmeans-4bit-all"), retrain_epochs=1,
                            retrain_lr=1e-3, train_limit=64, valid_limit=8, test_limit=12)
    monkeypatch.setitem(grid.SWEEP_PRESETS, "hf-test", tiny)
    monkeypatch.setitem(grid.EXPERIMENTS, "mixed-3x", grid.mixed(3))
    out = tmp_path / "rep"
    args = ["-q", "reproduce", "--preset", "hf-test", "--baseline", str(tiny_marian), "--data-dir", str(multi30k),
            "-o", str(out), "--only", "kmeans-4bit-all,kmeans-4bit-all+embeddings,mixed-3x"]
    assert main(args) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"baseline", "control", "kmeans-4bit-all", "kmeans-4bit-all+embeddings", "mixed-3x"}
    # the tied table compressed once: smaller than the row that leaves it dense
    assert rows["kmeans-4bit-all+embeddings"]["packed_bytes"] < rows["kmeans-4bit-all"]["packed_bytes"]
    assert rows["mixed-3x"]["model_compression_ratio"] >= 3.0 and (out / "models/mixed-3x.allocation.png").exists()
    assert all(r["status"] == "ok" and r["tests"]["test_2016_flickr"]["sentences"] == 12 for r in rows.values())
    k4 = rows["kmeans-4bit-all"]
    assert k4["model_compression_ratio"] > 1.5 and k4["packed_bytes"] == (out / "models/kmeans-4bit-all.sfz").stat().st_size
    assert [h.get("when") for h in k4["history"]] == [None, "compressed", "retrained"]
    # the packed row is a Hugging Face model that translates as the row scored it
    from shrinkformer.experiments.sweep import load_hypotheses
    from shrinkformer.loading import load_adapter
    from shrinkformer.workflow.pipeline import score_splits

    packed = load_adapter(out / "models/kmeans-4bit-all.sfz")
    assert packed.family == "huggingface"
    packed.cfg.data.data_dir = str(multi30k)
    assert score_splits(packed, ["test_2016_flickr"], 12)["test_2016_flickr"].hypotheses == \
        load_hypotheses(out, "kmeans-4bit-all", "test_2016_flickr")
    from shrinkformer.experiments import sweep

    def must_not_run(*a, **k):
        raise AssertionError("a cached row ran again")
    monkeypatch.setattr(sweep, "run_experiment", must_not_run)
    assert main(args) == 0  # a second run takes every row from the cache


def test_a_marian_model_compressed_to_a_byte_budget(tiny_marian, multi30k, tmp_path, capsys):
    packed, report = tmp_path / "m.sfz", tmp_path / "r.json"
    args = ["-q", "compress", str(tiny_marian), "--target-ratio", "3", "--retrain-epochs", "1", "--train-limit", "64",
            "--sensitivity-sentences", "32", "--data-dir", str(multi30k), "--no-test", "-o", str(packed),
            "--report", str(report)]
    assert main(args) == 0
    r = json.loads(report.read_text())
    alloc = r["allocation"]
    # every Linear under encoder/decoder, and the tied embedding table once
    assert len(alloc["layers"]) == 2 * 6 + 2 * 10 + 1 and "model.shared" in {r["name"] for r in alloc["layers"]}
    assert r["packed_bytes"] - r["sizes"]["tokenizer_bytes"] == alloc["packed_bytes"] <= alloc["budget_bytes"]
    assert r["model_compression_ratio"] >= 3.0
    assert (tmp_path / "m.allocation.json").exists() and (tmp_path / "m.allocation.png").stat().st_size > 0
    from shrinkformer.huggingface.model import load_packed

    hf = load_packed(packed)  # it loads and generates
    with torch.no_grad():
        hf.model.generate(**hf.tokenizer(LINES, return_tensors="pt", padding=True), num_beams=1, max_new_tokens=8)
    capsys.readouterr()
    too_small = run_cli("compress", str(tiny_marian), "--budget-bytes", "1000", "--data-dir", str(multi30k),
                        "-o", str(tmp_path / "small.sfz"))
    assert too_small.returncode != 0 and "is below the smallest model these choices reach" in too_small.stderr
    assert len(too_small.stderr.strip().splitlines()) == 1 and not (tmp_path / "small.sfz").exists()
