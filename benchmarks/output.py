"""Writing a benchmark's result, for the benchmarks that must not import torch (common.py does):
the JSON printed, and written to --out where given."""

from __future__ import annotations

import json
from pathlib import Path


def write(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
