"""What every benchmark shares: its parser (with --out benchmarks/results/NAME.json) and how it writes the result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmemb.io import atomic_write


def bench_parser(
    doc: str, name: str, model: str | None = None, dtype_help: str = ""
) -> argparse.ArgumentParser:
    """The parser of a benchmark: its docstring as help, --out defaulting to benchmarks/results/NAME.json;
    with `model`, --model (that default) and --dtype (the compute dtype; default: the model's setting)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(f"benchmarks/results/{name}.json"), help="result file")
    if model is not None:
        ap.add_argument("--model", default=model, help="a saved mmemb model, or nano-r1 (shipped)")
        ap.add_argument("--dtype", help=f"compute dtype (default: the model's setting){dtype_help}")
    return ap


def write_result(result: dict, out: Path, show: bool = True) -> None:
    """Print the result (unless not `show`) and write it to `out`, atomically."""
    text = json.dumps(result, indent=2) + "\n"
    if show:
        print(text, end="")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), text)
