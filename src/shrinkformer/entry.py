"""The ``shrinkformer`` command's entry: the full CLI (``cli.py``) where torch is installed; where
it is not (the base install is the runtime alone), ``shrinkformer translate`` runs the torch-free
runtime and every other command says in one line what to install."""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence


def _has_torch() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _has_torch():
        from .cli import main as full
        return full(argv)
    if argv[:1] == ["translate"]:
        from .runtime.cli import main as runtime
        return runtime(argv[1:], prog="shrinkformer translate")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: shrinkformer translate MODEL.sfz [options]  (this install is the runtime alone;\n"
              "       training, compression and the study need: pip install 'shrinkformer[train]')")
        return 0 if argv else 2
    print(f"shrinkformer: error: '{argv[0]}' needs the training install (pip install 'shrinkformer[train]'); "
          f"this install has the runtime alone: shrinkformer translate MODEL.sfz", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
