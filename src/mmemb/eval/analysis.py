"""Mode analysis over per-query records (plain functions).

Each record is a dict with at least "task", "row" and "score" (the task's main metric for that query),
as written by the runner; "reasoned", "gen_tokens" and "latency_s" where known.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence


def by_query(records: Sequence[dict]) -> dict[tuple[str, int], dict]:
    return {(r["task"], r["row"]): r for r in records}


def oracle(runs: dict[str, Sequence[dict]]) -> list[dict]:
    """Per query, the best score over the given runs (e.g. disc and gen): an UPPER BOUND, since picking
    the best mode per query uses the labels.

    score_oracle(q) = max_m score_m(q);  "mode" records which run gave it (ties: the first run named).
    Example: disc scores (1, 0, 0) and gen scores (0, 0, 1) over three queries -> oracle (1, 0, 1), mean 0.67.
    """
    names = list(runs)
    tables = {n: by_query(runs[n]) for n in names}
    out = []
    for key in tables[names[0]]:
        best = max(names, key=lambda n: tables[n][key]["score"] if key in tables[n] else float("-inf"))
        rec = dict(tables[best][key])
        rec["mode"] = best
        out.append(rec)
    return out


def pass_at_k(samples: Sequence[Sequence[dict]]) -> list[dict]:
    """pass@k for sampled gen embeddings: per query the best score over k samples.

    With hit@1 as the score this is the share of queries where at least one of the k samples ranks the
    gold first. Example: samples (1, 0), (0, 0), (0, 1) for two queries -> (1, 1), pass@3 = 1.0.
    """
    tables = [by_query(s) for s in samples]
    return [dict(max((t[key] for t in tables), key=lambda r: r["score"])) for key in tables[0]]


def per_task(records: Sequence[dict]) -> dict[str, dict]:
    """Mean score x100, invocation ratio, median latency and mean generated tokens per task and overall."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["task"]].append(r)
    out = {name: _stats(rs) for name, rs in groups.items()}
    out["ALL"] = _stats(records)
    return out


def _stats(rs: Sequence[dict]) -> dict:
    return {
        "score": 100 * statistics.fmean(r["score"] for r in rs) if rs else 0.0,
        "queries": len(rs),
        "invocation_ratio": statistics.fmean(bool(r.get("reasoned")) for r in rs) if rs else 0.0,
        "median_latency_s": statistics.median(r.get("latency_s", 0.0) for r in rs) if rs else 0.0,
        "mean_gen_tokens": statistics.fmean(r.get("gen_tokens", 0) for r in rs) if rs else 0.0,
    }
