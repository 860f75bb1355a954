"""Named datasets: where their files are, and fetching them for users who have a network.

``multi30k`` is looked up in the given data directory, then ``$SHRINKFORMER_DATA`` (the directory
itself or its ``multi30k/`` subdirectory), then the download cache; missing files are downloaded
from the dataset's official raw-file URLs and checked against known SHA-256 sums before they are
cached. ``wmt14`` comes through Hugging Face ``datasets`` (the optional ``wmt`` extra) and is
written once into the cache in the same ``{split}.{lang}`` layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError, UsageError
from ..io import atomic_write

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_SHA256 = {
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
}
DATASETS = ("multi30k", "wmt14")


def cache_root() -> Path:
    return Path(os.environ.get("SHRINKFORMER_CACHE", Path.home() / ".cache" / "shrinkformer"))


def _has_files(directory: Path, names: list[str]) -> bool:
    return all((directory / n).is_file() or (directory / n.removesuffix(".gz")).is_file() for n in names)


def resolve_data_dir(dataset: str, data_dir: str | Path | None, splits: list[str],
                     langs: tuple[str, str]) -> Path:
    """The directory holding ``{split}.{lang}[.gz]`` for every requested split."""
    if data_dir is not None:
        return Path(data_dir)  # explicit: the corpus reader reports what is missing there
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)}); "
                         "or give --data-dir with {split}.{lang} files")
    needed = [f"{s}.{lang}.gz" for s in splits for lang in langs]
    env = os.environ.get("SHRINKFORMER_DATA")
    if env:
        for candidate in (Path(env), Path(env) / dataset):
            if _has_files(candidate, needed):
                return candidate
    if dataset == "wmt14":
        return prepare_wmt14(cache_root() / "wmt14", splits, langs)
    return download_multi30k(cache_root() / "multi30k", [n for n in needed if n in MULTI30K_SHA256])


def download_multi30k(dest: Path, names: list[str], base_url: str | None = None) -> Path:
    base_url = base_url or os.environ.get("SHRINKFORMER_MULTI30K_URL", MULTI30K_URL)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dest / name
        if target.is_file():
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        log.info("downloading %s", url)
        try:
            with atomic_write(target) as out:  # nothing is cached unless the whole file checks out
                digest = hashlib.sha256()
                with urllib.request.urlopen(url, timeout=60) as response:
                    while block := response.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != MULTI30K_SHA256[name]:
                    raise DataError(f"checksum mismatch for {url}: expected sha256 {MULTI30K_SHA256[name]}, "
                                    f"got {digest.hexdigest()}; nothing was cached, try again")
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"cannot download {url}: {err}") from None
    return dest


def prepare_wmt14(dest: Path, splits: list[str], langs: tuple[str, str]) -> Path:
    """Write WMT14 En-De from Hugging Face ``datasets`` as plain ``{split}.{lang}`` files, once.
    ``SHRINKFORMER_WMT14_DATASET`` names a local copy (``DatasetDict.save_to_disk``, the hub's
    schema) to read instead of the hub: the offline route."""
    if _has_files(dest, [f"{s}.{lang}" for s in splits for lang in langs]):
        return dest
    try:
        import datasets  # optional extra
    except ImportError:
        raise UsageError("the wmt14 dataset needs Hugging Face datasets: pip install 'shrinkformer[wmt]'") from None
    local = os.environ.get("SHRINKFORMER_WMT14_DATASET")
    if local:
        try:
            saved = datasets.load_from_disk(local)
        except (FileNotFoundError, OSError, ValueError) as err:
            raise DataError(f"SHRINKFORMER_WMT14_DATASET={local}: not a saved datasets dataset ({err})") from None
    dest.mkdir(parents=True, exist_ok=True)
    hf_split = {"train": "train", "val": "validation", "valid": "validation", "test": "test"}
    for split in splits:
        if split not in hf_split:
            raise UsageError(f"wmt14 has splits {', '.join(hf_split)}, not {split!r}")
        if local and hf_split[split] not in saved:
            raise DataError(f"SHRINKFORMER_WMT14_DATASET={local}: no {hf_split[split]!r} split "
                            f"(has {', '.join(saved)})")
        rows = saved[hf_split[split]] if local else datasets.load_dataset("wmt14", "de-en", split=hf_split[split])
        for lang in langs:
            with atomic_write(dest / f"{split}.{lang}") as f:
                for row in rows:
                    f.write((row["translation"][lang].replace("\n", " ").strip() + "\n").encode("utf-8"))
    return dest
