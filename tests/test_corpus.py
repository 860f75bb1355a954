import gzip
import logging

import pytest

from shrinkformer.data.corpus import read_lines, read_parallel
from shrinkformer.errors import DataError


def write(path, text, gz=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)


def test_reads_the_shared_multi30k_splits(multi30k):
    for split, n in [("train", 29000), ("val", 1014), ("test_2016_flickr", 1000), ("test_2017_mscoco", 461)]:
        assert len(read_parallel(multi30k, split, "en", "de")) == n


def test_plain_and_gzip_files_read_the_same(tmp_path):
    write(tmp_path / "a.en", "one\ntwo\n")
    write(tmp_path / "a.de", "eins\nzwei\n", gz=False)
    write(tmp_path / "b.en.gz", "one\ntwo\n", gz=True)
    write(tmp_path / "b.de.gz", "eins\nzwei", gz=True)  # no final newline
    a, b = read_parallel(tmp_path, "a", "en", "de"), read_parallel(tmp_path, "b", "en", "de")
    assert a.source == b.source == ["one", "two"] and a.target == b.target == ["eins", "zwei"]


def test_line_count_mismatch_names_both_files(tmp_path):
    write(tmp_path / "train.en", "a\nb\nc\n")
    write(tmp_path / "train.de", "a\nb\n")
    with pytest.raises(DataError, match=r"train\.en has 3 lines but .*train\.de has 2"):
        read_parallel(tmp_path, "train", "en", "de")


def test_invalid_utf8_names_file_and_line(tmp_path):
    write(tmp_path / "train.en", b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"train\.en:3: invalid UTF-8"):
        read_lines(tmp_path / "train.en")


def test_empty_file_is_an_error(tmp_path):
    write(tmp_path / "train.en", "")
    with pytest.raises(DataError, match=r"train\.en: file is empty"):
        read_lines(tmp_path / "train.en")


def test_missing_split_lists_the_splits_that_exist(tmp_path):
    write(tmp_path / "train.en", "a\n")
    write(tmp_path / "val.en", "a\n")
    with pytest.raises(DataError, match=r"no test\.en or test\.en\.gz .*splits there: train, val"):
        read_parallel(tmp_path, "test", "en", "de")


def test_empty_pairs_are_skipped_and_counted(tmp_path, caplog):
    write(tmp_path / "train.en", "a\n\nc\n  \n")
    write(tmp_path / "train.de", "x\n\nz\nw\n")
    with caplog.at_level(logging.WARNING):
        p = read_parallel(tmp_path, "train", "en", "de")
    assert p.source == ["a", "c"] and p.target == ["x", "z"]
    assert "skipped 2 pair(s)" in caplog.text


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    write(tmp_path / "train.en.gz", b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"train\.en\.gz: cannot read"):
        read_lines(tmp_path / "train.en.gz")
