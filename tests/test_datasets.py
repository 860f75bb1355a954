"""The Multi30k downloader against a local HTTP server that serves the shared files."""

import functools
import http.server
import shutil
import threading

import pytest

from shrinkformer.data import datasets
from shrinkformer.data.datasets import download_multi30k, resolve_data_dir
from shrinkformer.errors import DataError, UsageError


@pytest.fixture
def server(tmp_path, multi30k):
    root = tmp_path / "www"
    root.mkdir()
    for name in ("val.en.gz", "val.de.gz"):
        shutil.copy(multi30k / name, root / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_and_caches(server, tmp_path, multi30k):
    _, url = server
    dest = download_multi30k(tmp_path / "cache", ["val.en.gz", "val.de.gz"], base_url=url)
    assert (dest / "val.en.gz").read_bytes() == (multi30k / "val.en.gz").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["val.de.gz", "val.en.gz"]  # no temp files left


def test_corrupted_download_is_an_error_and_caches_nothing(server, tmp_path):
    root, url = server
    data = bytearray((root / "val.en.gz").read_bytes())
    data[100] ^= 0xFF
    (root / "val.en.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/val\.en\.gz"):
        download_multi30k(tmp_path / "cache", ["val.en.gz"], base_url=url)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_server_is_an_error(tmp_path):
    with pytest.raises(DataError, match="cannot download http://127.0.0.1:9/val.en.gz"):
        download_multi30k(tmp_path / "cache", ["val.en.gz"], base_url="http://127.0.0.1:9")
    assert list((tmp_path / "cache").iterdir()) == []


def test_resolution_order_env_then_download(server, tmp_path, monkeypatch, multi30k):
    monkeypatch.setenv("SHRINKFORMER_DATA", str(multi30k.parent))  # the dataset as a subdirectory
    assert resolve_data_dir("multi30k", None, ["val"], ("en", "de")) == multi30k
    monkeypatch.delenv("SHRINKFORMER_DATA")
    monkeypatch.setenv("SHRINKFORMER_MULTI30K_URL", server[1])
    got = resolve_data_dir("multi30k", None, ["val"], ("en", "de"))
    assert got == datasets.cache_root() / "multi30k" and (got / "val.de.gz").exists()


def test_unknown_dataset_and_missing_wmt_extra():
    with pytest.raises(UsageError, match="unknown dataset 'wmt99'"):
        resolve_data_dir("wmt99", None, ["train"], ("en", "de"))
    try:
        import datasets as _  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match=r"pip install 'shrinkformer\[wmt\]'"):
            resolve_data_dir("wmt14", None, ["train"], ("en", "de"))


def test_wmt14_from_a_local_datasets_copy(multi30k, tmp_path, monkeypatch):
    """The wmt14 preset's data path, offline: a DatasetDict with the hub's WMT14 schema, saved to
    disk, becomes the plain {split}.{lang} files every command reads."""
    hf_datasets = pytest.importorskip("datasets")
    from shrinkformer.data.corpus import read_parallel

    def rows(split, n):
        raw = read_parallel(multi30k, split, "en", "de", n)
        return {"translation": [{"de": d, "en": e} for e, d in zip(raw.source, raw.target)]}

    saved = tmp_path / "wmt14-local"
    hf_datasets.DatasetDict({"train": hf_datasets.Dataset.from_dict(rows("train", 50)),
                             "validation": hf_datasets.Dataset.from_dict(rows("val", 10)),
                             "test": hf_datasets.Dataset.from_dict(rows("test_2016_flickr", 20))}).save_to_disk(saved)
    monkeypatch.setenv("SHRINKFORMER_WMT14_DATASET", str(saved))
    got = resolve_data_dir("wmt14", None, ["train", "val", "test"], ("en", "de"))
    assert got == datasets.cache_root() / "wmt14"
    train = read_parallel(got, "train", "en", "de")
    assert train.source == read_parallel(multi30k, "train", "en", "de", 50).source and len(train.target) == 50
    assert len(read_parallel(got, "test", "en", "de").source) == 20
    monkeypatch.setenv("SHRINKFORMER_WMT14_DATASET", str(tmp_path / "nothing"))
    monkeypatch.setenv("SHRINKFORMER_CACHE", str(tmp_path / "fresh-cache"))
    with pytest.raises(DataError, match="not a saved datasets dataset"):
        resolve_data_dir("wmt14", None, ["train"], ("en", "de"))
