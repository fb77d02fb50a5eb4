"""What every benchmark does with its result: print it and write it, atomically, as benchmarks/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

from mmemb.io import atomic_write


def write_result(result: dict, out: Path, show: bool = True) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if show:
        print(text, end="")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), text)
