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
