"""Sequence-level distillation's data: the teacher's translations are cached per chunk and resumed,
retraining learns from the references, the translations or both, and rows cached before the option
existed keep their keys."""

import json
from pathlib import Path

import pytest

from shrinkformer.cli import main
from shrinkformer.data.corpus import Parallel
from shrinkformer.errors import UsageError
from shrinkformer.loading import load_adapter
from shrinkformer.translate import Translator
from shrinkformer.workflow import teacher
from shrinkformer.workflow.retrain import RetrainConfig
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_translations_are_cached_per_chunk_and_a_lost_chunk_is_all_that_is_redone(tiny_run, monkeypatch):
    adapter = load_adapter(tiny_run / "model.pt", training=True)
    sources = [f"a man with {n} dogs ." for n in range(50)]
    monkeypatch.setattr(teacher, "CHUNK", 16)
    calls = []
    real = Translator.translate

    def counting(self, lines):
        calls.append(len(lines))
        return real(self, lines)

    monkeypatch.setattr(Translator, "translate", counting)
    first = teacher.translations(adapter, sources)
    assert len(first) == 50 and calls == [16, 16, 16, 2]
    directory = teacher.cache_path(adapter, sources)
    assert sorted(p.name for p in directory.iterdir()) == [f"{i:05d}.txt.gz" for i in range(4)]
    (directory / "00002.txt.gz").unlink()  # as a run killed before that chunk was written
    calls.clear()
    assert teacher.translations(adapter, sources) == first and calls == [16]
    assert teacher.cache_path(adapter, sources[:-1]) != directory  # other sources, other translations


def test_retraining_pairs():
    refs = Parallel(["a", "b", "c"], ["A", "B", "C"])
    hyps = ["x", "", "z"]  # an empty translation teaches nothing
    assert teacher.retraining_pairs("references", refs, None) == refs
    assert teacher.retraining_pairs("teacher", refs, hyps) == Parallel(["a", "c"], ["x", "z"])
    assert teacher.retraining_pairs("both", refs, hyps) == Parallel(["a", "b", "c", "a", "c"], ["A", "B", "C", "x", "z"])
    with pytest.raises(UsageError, match="must be one of references, teacher, both"):
        RetrainConfig(data="gold")


def test_compress_retrains_on_the_teachers_translations(tiny_run, multi30k, tmp_path):
    args = ["-q", "compress", str(tiny_run / "model.pt"), "--method", "kmeans", "--bits", "2", "--retrain-epochs", "1",
            "--train-limit", "120", "--no-test", "--threads", "1", "--data-dir", str(multi30k)]
    for data in ("references", "teacher"):
        assert main([*args, "--retrain-data", data, "-o", str(tmp_path / f"{data}.sfz")]) == 0
    assert (tmp_path / "references.sfz").read_bytes() != (tmp_path / "teacher.sfz").read_bytes()
    from shrinkformer.data.datasets import cache_root

    assert len(list((cache_root() / "teacher").glob("*/*.txt.gz"))) == 1  # 120 sources: one chunk
    bad = run_cli("-q", "compress", str(tiny_run / "model.pt"), "--method", "kmeans", "--retrain-data", "gold",
                  "-o", str(tmp_path / "x.sfz"))
    assert bad.returncode == 2 and "invalid choice: 'gold'" in bad.stderr


def test_rows_cached_before_the_option_keep_their_keys():
    """The committed study's cache stays valid: adding retrain_data must not re-key 27 rows."""
    from shrinkformer.experiments.grid import EXPERIMENTS, SWEEP_PRESETS
    from shrinkformer.experiments.sweep import cache_key, fingerprint

    base = fingerprint(ROOT / "results" / "multi30k" / "models" / "baseline.sfz")
    cached = sorted((ROOT / "results" / "multi30k" / "cache").glob("*.json"))
    assert len(cached) >= 27
    for path in cached:
        entry = json.loads(path.read_text())
        if path.stem in EXPERIMENTS and EXPERIMENTS[path.stem].retrain_data == "references":
            assert cache_key(EXPERIMENTS[path.stem], SWEEP_PRESETS["multi30k"], base) == entry["key"], path.stem
