"""CTranslate2 export: the exported model translates as ours does, and bad targets are one-line errors."""

import builtins
import dataclasses
from pathlib import Path

import pytest

from shrinkformer.cli import main
from shrinkformer.compress import KMeansConfig, compress
from shrinkformer.checkpoint import load_model
from shrinkformer.data.corpus import read_parallel
from shrinkformer.errors import UsageError
from shrinkformer.loading import load_any
from shrinkformer.export.ctranslate2 import CTranslate2Translator, export
from shrinkformer.translate import Translator

from .conftest import run_cli

pytest.importorskip("ctranslate2")


BASELINE = Path(__file__).resolve().parents[1] / "results" / "multi30k" / "models" / "baseline.sfz"


def test_float32_export_of_the_trained_baseline_translates_like_it(multi30k, tmp_path):
    cfg, tok, model = load_any(BASELINE)
    out = export(model, tok, tmp_path / "ct2")
    assert (out / "model.bin").exists() and (out / "sentencepiece.model").read_bytes() == tok.model_proto
    lines = read_parallel(multi30k, "test_2016_flickr", "en", "de", 100).source + [""]
    ours = Translator(model, tok, cfg.decode).translate(lines)
    theirs = CTranslate2Translator(out, beam_size=cfg.decode.beam_size, threads=1).translate(lines)
    assert theirs[-1] == "" and sum(a == b for a, b in zip(ours, theirs)) >= 99


def test_compressed_model_exports_its_effective_weights(tiny_run, multi30k, tmp_path):
    """Greedy, so that only the weights decide (beam search ranks hypotheses cut at the length
    limit differently in the two engines: we force EOS there, CTranslate2 stops)."""
    cfg, tok, model = load_model(tiny_run / "model.pt")
    compress(model, KMeansConfig(3), "all")
    out = export(model.eval(), tok, tmp_path / "ct2")
    lines = read_parallel(multi30k, "test_2016_flickr", "en", "de", 60).source
    ours = Translator(model, tok, dataclasses.replace(cfg.decode, beam_size=1)).translate(lines)
    assert CTranslate2Translator(out, beam_size=1, threads=1).translate(lines) == ours


def test_export_command_and_its_errors(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "int8"
    assert main(["-q", "export", str(tiny_run / "model.pt"), "--quantization", "int8", "-o", str(out)]) == 0
    assert (out / "model.bin").exists()
    again = run_cli("export", str(tiny_run / "model.pt"), "-o", str(out))
    assert again.returncode == 1 and f"{out} already exists" in again.stderr and again.stderr.count("\n") == 1

    real_import = builtins.__import__

    def no_ctranslate2(name, *args, **kwargs):
        if name == "ctranslate2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    _, tok, model = load_model(tiny_run / "model.pt")
    monkeypatch.setattr(builtins, "__import__", no_ctranslate2)
    with pytest.raises(UsageError, match=r"pip install 'shrinkformer\[export\]'"):
        export(model, tok, tmp_path / "x")
    assert not (tmp_path / "x").exists()
