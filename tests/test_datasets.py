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
