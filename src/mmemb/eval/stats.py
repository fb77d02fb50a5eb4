"""Paired bootstrap confidence intervals for differences between two scorings of the same queries.

Scores are per query (hit@1 is 0/1, nDCG in [0, 1]). The overall is the plain mean over tasks of each
task's mean query score, as mmemb and MMEB report it, so the bootstrap resamples queries *within* each task
(with replacement, the same resampled queries for both sides: paired) and recomputes that overall.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def paired_ci(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], resamples: int = 10_000, seed: int = 0
) -> dict:
    """Difference b - a of the task-averaged mean (x100) with its 95% percentile interval.

    a, b: task -> (n_task,) per-query scores, the same queries in the same order on both sides.
    Returns {"a", "b", "diff", "ci95": [lo, hi], "queries"}; a task with one query contributes no spread.
    """
    if set(a) != set(b):
        raise ValueError(f"the two sides score different tasks: {sorted(set(a) ^ set(b))}")
    if not a:
        raise ValueError("no tasks to compare")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(resamples)
    for task in a:
        x, y = np.asarray(a[task], float), np.asarray(b[task], float)
        if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
            raise ValueError(
                f"task {task}: expected two equal-length score vectors, got {x.shape}, {y.shape}"
            )
        idx = rng.integers(0, len(x), size=(resamples, len(x)))  # (R, n): resampled queries of this task
        diffs += (y[idx] - x[idx]).mean(1)
    diffs *= 100 / len(a)
    mean_a = 100 * float(np.mean([np.mean(a[t]) for t in a]))
    mean_b = 100 * float(np.mean([np.mean(b[t]) for t in a]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "a": round(mean_a, 2),
        "b": round(mean_b, 2),
        "diff": round(mean_b - mean_a, 2),
        "ci95": [round(float(lo), 2), round(float(hi), 2)],
        "queries": int(sum(len(a[t]) for t in a)),
    }


def excludes_zero(ci: dict) -> bool:
    lo, hi = ci["ci95"]
    return lo > 0 or hi < 0


def by_task(records: list[dict]) -> dict[str, dict]:
    """Per-query records (per_query.*.jsonl rows: task, row, score) -> task -> {row: score}."""
    out: dict[str, dict] = {}
    for r in records:
        out.setdefault(r["task"], {})[r["row"]] = float(r["score"])
    return out


def paired_ci_records(a: list[dict], b: list[dict], tasks: list[str] | None = None, **kw) -> dict:
    """`paired_ci` of two evaluation runs over the same queries (matched by task and row); `tasks` limits
    the comparison to those tasks (one task: that task's own interval)."""
    ta, tb = by_task(a), by_task(b)
    if tasks is None and set(ta) != set(tb):
        raise ValueError(f"the two runs score different tasks: {sorted(set(ta) ^ set(tb))}")
    names = tasks or sorted(ta)
    for t in names:
        if not ta.get(t) or set(ta[t]) != set(tb.get(t, {})):
            raise ValueError(
                f"task {t}: the two runs score different queries; evaluate both on the same ones"
            )
    keys = {t: sorted(ta[t]) for t in names}
    return paired_ci(
        {t: np.array([ta[t][k] for k in keys[t]]) for t in names},
        {t: np.array([tb[t][k] for k in keys[t]]) for t in names},
        **kw,
    )
