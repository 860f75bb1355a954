"""A MarianMT trained on Multi30k, then compressed through the command line as a user who brings a
Hugging Face model would: no retraining, retraining (with --keep-best), the tied embeddings
compressed too, and the export back to transformers translating as the .sfz does.

The model is a transformers ``MarianMTModel`` with a ``MarianTokenizer`` (two SentencePiece models
trained on the Multi30k training sides, one vocabulary), trained once by shrinkformer's own loop
through the Hugging Face adapter (the control stage: retraining without compression). Everything
is cached under ``~/.cache/shrinkformer/bench-hf/`` (the training resumes, each compressed model is
kept), so a killed run continues where it stopped.

    cd benchmarks && python hf_marian.py --out ../results/benchmarks/hf_marian.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, report

from shrinkformer.data.datasets import cache_root

SPLIT = "test_2016_flickr"
THREADS = 2


def lines(split: str, lang: str) -> list[str]:
    with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def build(directory: Path, vocab: int) -> None:
    """An untrained MarianMT and its tokenizer, saved with save_pretrained."""
    import sentencepiece as spm
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    pieces: list[str] = []
    for lang, name in (("en", "source"), ("de", "target")):
        prefix = directory / name
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines("train", lang)), model_prefix=str(prefix),
                                       vocab_size=vocab, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
        (directory / f"{name}.spm").write_bytes(prefix.with_suffix(".model").read_bytes())
        proc = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))
        pieces += [proc.id_to_piece(i) for i in range(1, proc.get_piece_size())]
    ids = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        ids.setdefault(p, len(ids))
    ids["<pad>"] = len(ids)
    (directory / "vocab.json").write_text(json.dumps(ids))
    tok = transformers.MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"),
                                       str(directory / "vocab.json"), source_lang="en", target_lang="de")
    torch.manual_seed(1)
    cfg = transformers.MarianConfig(vocab_size=len(ids), d_model=256, encoder_layers=3, decoder_layers=3,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
                                    decoder_ffn_dim=1024, max_position_embeddings=256, pad_token_id=ids["<pad>"],
                                    eos_token_id=0, decoder_start_token_id=ids["<pad>"], dropout=0.1,
                                    num_beams=5, max_length=128)
    model = transformers.MarianMTModel(cfg)
    model.generation_config.num_beams, model.generation_config.max_length = 5, 128
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def train(untrained: Path, trained: Path, epochs: int, work: Path) -> float:
    """Train with shrinkformer's loop through the Hugging Face adapter; returns the wall seconds."""
    from shrinkformer.loading import load_adapter
    from shrinkformer.workflow.retrain import RetrainConfig, Stage, retrain

    started = time.perf_counter()
    adapter = load_adapter(untrained, training=True)
    adapter.cfg.data.data_dir = str(DATA)
    adapter.model.train()
    retrain(adapter, [Stage(None)], RetrainConfig(epochs=epochs, lr=7e-4, warmup_steps=300, save_every_steps=200,
                                                         batch_tokens=2048),
            work_dir=work)
    tmp = trained.with_name(trained.name + ".tmp")
    adapter.model.eval().save_pretrained(tmp)
    adapter.hf.tokenizer.save_pretrained(tmp)
    tmp.rename(trained)
    return time.perf_counter() - started


def shrinkformer(command: str, *args: str) -> list[str]:
    threads = [] if command == "export" else ["--threads", str(THREADS)]
    return [sys.executable, "-m", "shrinkformer", "-q", command, *args, *threads]


def compressed(cache: Path, name: str, model: Path, *options: str) -> dict:
    """One compress run, its report cached beside its model."""
    out, rep = cache / f"{name}.sfz", cache / f"{name}.json"
    command = shrinkformer("compress", str(model), *options, "--data-dir", str(DATA), "-o", str(out),
                           "--report", str(rep))
    if not rep.exists():
        subprocess.run(command, check=True)
    r = json.loads(rep.read_text())
    return {"command": shlex.join(command[2:]).replace(str(cache), "$CACHE"), "bleu": r["tests"][SPLIT]["bleu"],
            "model_compression_ratio": round(r["model_compression_ratio"], 3), "packed_bytes": r["packed_bytes"],
            "history": r["history"], "retrain_seconds": r["retrain_seconds"]}


def translated(cache: Path, name: str, model: Path) -> list[str]:
    out = cache / f"{name}.{SPLIT}.de"
    if not out.exists():
        subprocess.run(shrinkformer("translate", str(model), "--input", str(cache / f"{SPLIT}.en"), "-o", str(out)),
                       check=True)
    return out.read_text(encoding="utf-8").splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10, help="training epochs of the MarianMT")
    p.add_argument("--vocab", type=int, default=6000, help="SentencePiece pieces per language")
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every step (default 2)")
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    import torch
    torch.set_num_threads(args.threads)
    cache = cache_root() / "bench-hf" / f"marian-{args.epochs}ep-{args.vocab}"
    untrained, trained = cache / "untrained", cache / "trained"
    if not (untrained / "config.json").exists():
        build(untrained, args.vocab)
    train_seconds = None
    if not (trained / "config.json").exists():
        train_seconds = round(train(untrained, trained, args.epochs, cache / "train.work"), 1)
    (cache / f"{SPLIT}.en").write_text("\n".join(lines(SPLIT, "en")) + "\n", encoding="utf-8")

    plain = compressed(cache, "kmeans-4bit", trained, "--method", "kmeans", "--bits", "4", "--retrain-epochs", "0")
    retrained = compressed(cache, "kmeans-4bit-retrained", trained, "--method", "kmeans", "--bits", "4",
                           "--retrain-epochs", "1", "--lr", "1e-4", "--keep-best")
    # biases, norms and final_logits_bias in fp16 as a budget keeps them: in fp32 they held the whole
    # model at 6.97x, below the 7x bar
    whole = compressed(cache, "kmeans-4bit-all+embeddings-fp16", trained, "--method", "kmeans", "--bits", "4",
                       "--scope", "all", "--scope", "embeddings", "--dense-dtype", "fp16", "--retrain-epochs", "1",
                       "--lr", "1e-4", "--keep-best")
    dense = subprocess.run(shrinkformer("evaluate", str(trained), "--data-dir", str(DATA), "--split", SPLIT, "--json"),
                           check=True, capture_output=True, text=True)
    dense_bleu = json.loads(dense.stdout)["bleu"]
    exported = cache / "exported"
    if not exported.exists():
        subprocess.run(shrinkformer("export", str(cache / "kmeans-4bit-all+embeddings-fp16.sfz"), "--format", "hf",
                                    "-o", str(exported)), check=True)
    a = translated(cache, "packed", cache / "kmeans-4bit-all+embeddings-fp16.sfz")
    b = translated(cache, "exported", exported)
    report("hf_marian", {
        "command": "python " + shlex.join(sys.argv), "split": SPLIT, "epochs": args.epochs,
        "train_seconds_this_run": train_seconds, "uncompressed_bleu": dense_bleu,
        "kmeans_4bit_no_retraining": plain, "kmeans_4bit_retrained": retrained,
        "kmeans_4bit_with_embeddings": whole,
        "retrained_at_least_no_retraining": retrained["bleu"] >= plain["bleu"],
        "with_embeddings_retention": round(whole["bleu"] / dense_bleu, 4) if dense_bleu else None,
        "with_embeddings_at_least_7x_and_98_percent": whole["model_compression_ratio"] >= 7
        and bool(dense_bleu) and whole["bleu"] >= 0.98 * dense_bleu,
        "export_identical_lines_share": sum(x == y for x, y in zip(a, b)) / max(len(a), 1),
    }, args.out)


if __name__ == "__main__":
    main()
