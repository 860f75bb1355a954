"""``shrinkformer web-demo MODEL.sfz -o DIR``: the page (``static/``), the WebAssembly runtime and
the model beside it, in a directory any static server serves (``python -m http.server -d DIR``).
The model is checked first (format, checksum, that the page can run it), and the directory
appears only when complete."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import CheckpointError, UsageError
from ..runtime import sfz
from . import build

PAGE = ("index.html", "page.mjs", "shrinkformer.mjs")
NODE_RUNNER = "translate.mjs"  # the same runtime under Node (tests, benchmarks/browser.py)


def page_files() -> list[Path]:
    """What the page loads besides the model: HTML, JavaScript and the module."""
    return [build.STATIC / name for name in PAGE] + [build.module()]


def write(model: Path, out: Path, overwrite: bool = False) -> Path:
    model, out = Path(model), Path(out)
    packed = sfz.read(model)
    if "config" not in packed.meta:
        raise CheckpointError(f"{model}: the page runs shrinkformer's own Transformer; this file holds another "
                              f"model family (translate it with the torch install)")
    if out.exists() and not (overwrite and out.is_dir()):
        raise UsageError(f"{out} exists: choose another directory, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(0o755)  # a directory to serve, not mkdtemp's private one
        for f in page_files():
            shutil.copyfile(f, tmp / ("shrinkformer.wasm" if f.suffix == ".wasm" else f.name))
        shutil.copyfile(build.STATIC / NODE_RUNNER, tmp / NODE_RUNNER)
        shutil.copyfile(model, tmp / "model.sfz")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(err.errno, f"cannot write {out}: {err.strerror}") from None
    return out
