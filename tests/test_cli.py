import json

import pytest

from shrinkformer.cli import main

from .conftest import run_cli


@pytest.mark.parametrize("command", ["train", "translate", "evaluate"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: shrinkformer " + command in capsys.readouterr().out


def test_translate_streams_stdin_and_files(tiny_run, tmp_path):
    src = "A man is riding a bike.\nTwo dogs play in the snow.\n\nA woman.\n"
    out = run_cli("translate", str(tiny_run / "model.pt"), "--beam", "2", stdin=src)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")[:-1]
    assert len(lines) == 4 and lines[2] == "" and all(lines[i] for i in (0, 1, 3))
    (tmp_path / "in.txt").write_text(src)
    assert main(["translate", str(tiny_run / "model.pt"), "--beam", "2", "-i", str(tmp_path / "in.txt"),
                 "-o", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text() == out.stdout


def test_evaluate_checkpoint_and_files(tiny_run, multi30k, tmp_path, capsys):
    assert main(["-q", "evaluate", str(tiny_run / "model.pt"), "--data-dir", str(multi30k),
                 "--split", "test_2017_mscoco", "--beam", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test_2017_mscoco" and result["sentences"] == 461 and 0 <= result["bleu"] <= 100
    (tmp_path / "h").write_text("Ein Hund läuft.\nZwei Katzen.\n")
    assert main(["evaluate", "--hypotheses", str(tmp_path / "h"), "--references", str(tmp_path / "h")]) == 0
    assert capsys.readouterr().out.startswith("BLEU = 100.00 (nrefs:1|case:mixed")


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "tiny", "--set", "train.lr=fast"], "train.lr: expected float"),
    (["train", "--preset", "tiny", "--set", "model.d_model=31"], "must be divisible"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "tiny", "--set", "train.speed=1"], "unknown key train.speed"),
], ids=["bad-type", "bad-shape", "bad-preset", "unknown-key"])
def test_bad_parameters_exit_2_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_cli(*args, "--output", str(out))
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_bad_data_is_one_line_and_leaves_no_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.en").write_text("a b\nc d\n")
    (data / "train.de").write_text("a b\n")
    out = tmp_path / "run"
    result = run_cli("train", "--preset", "tiny", "--data-dir", str(data), "--output", str(out))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "train.en has 2 lines but" in result.stderr
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()


def test_invalid_utf8_input_is_an_error_and_no_output_file(tiny_run, tmp_path):
    (tmp_path / "in.txt").write_bytes(b"A dog runs.\n" * 300 + b"bad \xff\n")
    out = tmp_path / "out.txt"
    result = run_cli("translate", str(tiny_run / "model.pt"), "-i", str(tmp_path / "in.txt"), "-o", str(out),
                     "--beam", "1")
    assert result.returncode == 1 and "in.txt: invalid UTF-8" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "in.txt"]


def test_every_option_of_every_command_has_help():
    import argparse

    from shrinkformer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_translate_output_into_a_missing_directory_creates_it(tiny_run, tmp_path):
    out = tmp_path / "new" / "dir" / "out.txt"
    result = run_cli("translate", str(tiny_run / "model.pt"), "--beam", "1", "-o", str(out), stdin="A dog.\n")
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.parametrize("where", ["parent-is-a-file", "dev-full", "is-a-directory"])
def test_unwritable_output_is_one_line_and_leaves_nothing(tiny_run, tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = {"parent-is-a-file": tmp_path / "file" / "out.txt", "dev-full": "/dev/full",
           "is-a-directory": tmp_path}[where]
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("translate", str(tiny_run / "model.pt"), "--beam", "1", "-o", str(out), stdin="A dog.\n" * 3000)
    assert result.returncode == 1 and result.stderr.startswith(f"shrinkformer: error: cannot write {out}")
    assert result.stderr.count("\n") == 1 and sorted(tmp_path.rglob("*")) == before


def test_dev_full_is_reported_by_every_writer():
    from shrinkformer.errors import OutputError
    from shrinkformer.io import write_text_atomic

    with pytest.raises(OutputError, match="cannot write /dev/full: No space left on device"):
        write_text_atomic("/dev/full", "x" * 100)


def test_read_only_directory_is_one_line(tiny_run, tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    result = run_cli("translate", str(tiny_run / "model.pt"), "-o", str(ro / "out.txt"), stdin="A dog.\n")
    assert result.returncode == 1 and "cannot write" in result.stderr and result.stderr.count("\n") == 1


def test_train_data_dir_is_a_path_not_yaml(multi30k, tmp_path):
    """'#' would start a YAML comment, '2016' would be a number, '~' null: none of that for a path."""
    import shutil
    odd = tmp_path / "corpus #2"
    shutil.copytree(multi30k, odd)
    result = run_cli("train", "--preset", "tiny", "--set", "train.max_epochs=1", "--set", "data.train_limit=100",
                     "--set", "data.valid_limit=10", "--data-dir", str(odd), "--output", str(tmp_path / "run"),
                     env={"SHRINKFORMER_CACHE": str(tmp_path / "no-download")})
    assert result.returncode == 0, result.stderr[-2000:]
    cache = tmp_path / "no-download"  # where a download would go (compiled kernels may be cached there)
    assert not [p for p in cache.glob("*") if p.name != "kernels"]
