"""Paired confidence interval of the difference between two evaluation runs of the same queries.

    python benchmarks/paired_ci.py A/per_query.RUN.jsonl B/per_query.RUN.jsonl [--resamples 10000]

Overall = plain mean over tasks of each task's mean query score (x100), as mmemb and MMEB report it. The
difference B - A is bootstrapped by resampling queries within each task (the same queries for both runs:
paired), 95% percentile interval (mmemb.eval.stats.paired_ci_records). Also printed: how many queries changed score at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmemb.eval.stats import paired_ci_records


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--resamples", type=int, default=10_000)
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    try:
        ci = paired_ci_records(a, b, resamples=args.resamples)
    except ValueError as e:
        raise SystemExit(f"{args.a} vs {args.b}: {e}") from None
    score = {(r["task"], r["row"]): r["score"] for r in a}
    changed = sum(score[(r["task"], r["row"])] != r["score"] for r in b)
    print(json.dumps({"a": str(args.a), "b": str(args.b), "queries": ci["queries"],
                      "tasks": len({r["task"] for r in a}), "overall_a": ci["a"], "overall_b": ci["b"],
                      "b_minus_a": ci["diff"], "ci95": ci["ci95"], "queries_whose_score_changed": changed},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
