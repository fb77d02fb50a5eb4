"""The study's results (`mmemb reproduce`, stages report and export): per-query records summarised per task,
meta-task and run, with paired confidence intervals between runs and ablations, and the Markdown report.

    collect(out, models, data_root) -> results.json's content
    format_results(results)         -> report.md's text
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .eval.metrics import group_means, meta_task
from .io import read_jsonl

VARIANTS = ("none", "all", "absolute", "selected")
MODES = {  # run name -> (query mode, target mode)
    "disc": ("disc", "disc"),
    "never": ("nothink", "nothink"),
    "always": ("think", "nothink"),
    "adaptive": ("adaptive", "nothink"),
}
LABELS = {
    "disc": "disc (no generation)",
    "never": "never think (nothink)",
    "always": "always think",
    "adaptive": "adaptive (policy)",
    "oracle": "oracle: better action per query (uses labels)",
}
ABLATIONS = {
    "none": "no reasoning in training",
    "all": "all rationales (no selection)",
    "absolute": "selected without counterfactual control (utility absolute)",
    "selected": "selected by the pair utility (the method)",
}


# ---- results --------------------------------------------------------------------------------------
def _records(folder: Path) -> list[dict]:
    f = next(folder.glob("per_query.*.jsonl"), None)
    return [row for _, row in read_jsonl(f)] if f else []


def summarize_records(recs: list[dict], groups: dict[str, str]) -> dict:
    """Score per task (x100) and per meta-task, overall (plain mean of tasks), invocation, latency."""
    by_task: dict[str, list[float]] = {}
    for q in recs:
        by_task.setdefault(q["task"], []).append(q["score"])
    tasks = {t: 100 * statistics.fmean(v) for t, v in sorted(by_task.items())}
    lat = [q.get("latency_s", 0.0) for q in recs]
    return {
        "tasks": tasks,
        "meta": group_means(tasks, groups),
        "overall": statistics.fmean(tasks.values()) if tasks else 0.0,
        "queries": len(recs),
        "invocation": statistics.fmean(bool(q.get("reasoned")) for q in recs) if recs else 0.0,
        "median_latency_s": statistics.median(lat) if lat else 0.0,
        "mean_latency_s": statistics.fmean(lat) if lat else 0.0,
        "mean_gen_tokens": statistics.fmean(q.get("gen_tokens", 0) for q in recs) if recs else 0.0,
    }


def collect(out: Path, models: dict[str, Path], data_root: Path) -> dict:
    from .eval.analysis import oracle

    tasks = json.loads((data_root / "tasks.json").read_text())
    groups = {t["name"]: meta_task(t["modality"], t["meta_task"]) for t in tasks}
    results: dict = {"models": {}}
    records: dict[str, dict[str, list[dict]]] = {}
    for name in models:
        runs = {run: _records(out / "eval" / name / run) for run in MODES}
        runs = {k: v for k, v in runs.items() if v}
        if "never" in runs and "always" in runs:
            # per query the better of the two actions (its record, latency included): an upper bound
            best = oracle({"never": runs["never"], "always": runs["always"]})
            runs["oracle"] = [q | {"reasoned": q["mode"] == "always"} for q in best]
        results["models"][name] = {run: summarize_records(recs, groups) for run, recs in runs.items()}
        records[name] = runs
    results["intervals"] = intervals(records)
    if (out / "sweep" / "sweep.json").is_file():
        results["sweep"] = json.loads((out / "sweep" / "sweep.json").read_text())
    return results


MODE_DIFFS = [("always", "never"), ("adaptive", "never"), ("adaptive", "always"), ("disc", "never")]
ABLATION_DIFFS = [("selected", "none"), ("selected", "all"), ("selected", "absolute")]


def intervals(records: dict[str, dict[str, list[dict]]]) -> dict:
    """Paired 95% bootstrap intervals (eval/stats.py) of the differences the report states: between modes of
    the method's model (overall, and per task for always - never), and between stage-1 variants (always
    think and never think)."""
    from .eval.stats import paired_ci_records

    out: dict = {"modes": {}, "always_minus_never_by_task": {}, "ablations": {}}
    main = records.get("selected") or next(iter(records.values()), {})
    for b, a in MODE_DIFFS:
        if a in main and b in main:
            out["modes"][f"{b} - {a}"] = paired_ci_records(main[a], main[b])
    if "always" in main and "never" in main:
        for task in sorted({r["task"] for r in main["never"]}):
            out["always_minus_never_by_task"][task] = paired_ci_records(main["never"], main["always"], [task])
    for b, a in ABLATION_DIFFS:
        for run in ("always", "never"):
            if b in records and a in records and run in records[a] and run in records[b]:
                out["ablations"][f"{b} - {a} ({run} think)"] = paired_ci_records(
                    records[a][run], records[b][run]
                )
    return out


def _overall_se(r: dict) -> float:
    """About one standard error of a run's overall score (points): binomial per task, tasks of equal size."""
    scores = [v / 100 for v in r["tasks"].values()]  # hit@1 and nDCG@5 both lie in [0, 1]
    n = r["queries"] / len(scores)
    return 100 * math.sqrt(sum(p * (1 - p) / n for p in scores)) / len(scores)


def _ci_line(name: str, ci: dict) -> str:
    lo, hi = ci["ci95"]
    mark = " (excludes 0)" if lo > 0 or hi < 0 else ""
    return f"- {name}: {ci['diff']:+.1f} (95% CI {lo:+.1f} to {hi:+.1f}, {ci['queries']} queries){mark}"


def format_results(res: dict) -> str:
    main = res["models"].get("selected") or next(iter(res["models"].values()))
    groups = sorted({g for r in main.values() for g in r["meta"]})
    always = main.get("always", {}).get("mean_latency_s") or float("nan")
    lines = [
        "## Modes (the method's model)",
        "",
        "| mode | "
        + " | ".join(groups)
        + " | overall | invocation | median latency | mean time vs always-think |",
        "|---|" + "---:|" * (len(groups) + 4),
    ]
    for run, r in main.items():
        cells = " | ".join(f"{r['meta'].get(g, float('nan')):.1f}" for g in groups)
        lines.append(
            f"| {LABELS[run]} | {cells} | **{r['overall']:.1f}** | {r['invocation']:.0%} | "
            f"{r['median_latency_s'] * 1000:.0f} ms | {r['mean_latency_s'] / always:.2f} |"
        )
    recorded = res.get("recorded", {}).get("models", {}).get("selected")
    if recorded:
        lines += ["", "Against the numbers recorded with the weights (their `mmemb reproduce` run):", ""]
        data, rec_data = res.get("data") or {}, res["recorded"].get("data") or {}
        same_data = data.get("content_hash") == rec_data.get("content_hash")
        lines.append(f"- data: {data.get('version')}, content hash {data.get('content_hash')} "
                     f"({'the recorded build' if same_data else 'DIFFERENT from the recorded build'})")  # fmt: skip
        now, then = res.get("dtype", "float32"), res["recorded"].get("dtype", "float32")
        if now != then:
            ref = main.get("never") or next(iter(main.values()))
            lines.append(f"- computed in {now} here, recorded in {then}: rounding moves single queries, so the "
                         f"scores may differ within noise (one standard error of the overall is about "
                         f"{_overall_se(ref):.1f} points at {ref['queries']} queries)")  # fmt: skip
        for run, r in main.items():
            if run in recorded:
                diff = r["overall"] - recorded[run]["overall"]
                same = "same" if abs(diff) < 0.05 else (f"{diff:+.1f}" if now != then else "DIFFERENT")
                lines.append(
                    f"- {LABELS[run]}: {r['overall']:.1f} now, {recorded[run]['overall']:.1f} recorded ({same})"
                )
    if "adaptive" in main and "always" in main:
        lines += ["", f"Adaptive is {always / main['adaptive']['mean_latency_s']:.2f}x as fast as always-think "
                  f"(mean time per query), reasoning on {main['adaptive']['invocation']:.0%} of the queries."]  # fmt: skip
    iv = res.get("intervals") or {}
    if iv.get("modes"):
        lines += ["", "Paired differences (bootstrap over queries within tasks):", ""]
        lines += [_ci_line(name, ci) for name, ci in iv["modes"].items()]
        tasks = iv.get("always_minus_never_by_task") or {}
        wins = [t for t, ci in tasks.items() if ci["ci95"][0] > 0]
        if tasks:
            lines.append(f"- always - never, per task: reasoning pays (interval above 0) on {len(wins)} of "
                         f"{len(tasks)} tasks{': ' + ', '.join(wins) if wins else ''}")  # fmt: skip
    if len(res["models"]) > 1:
        lines += [
            "",
            "## Ablations (stage-1 training data; overall score)",
            "",
            "| stage-1 variant | disc | never think | always think | oracle |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in VARIANTS:
            if name in res["models"]:
                r = res["models"][name]
                cells = " | ".join(
                    f"{r[k]['overall']:.1f}" if k in r else "—" for k in ("disc", "never", "always", "oracle")
                )
                lines.append(f"| {ABLATIONS[name]} | {cells} |")
        if iv.get("ablations"):
            lines += [""] + [_ci_line(name, ci) for name, ci in iv["ablations"].items()]
    if "sweep" in res:
        from .train.sweep import format_table

        lines += ["", "## λ sweep (policy heads on the selected model)", "", format_table(res["sweep"])]
    if res.get("stage_seconds"):
        lines += ["", "Stage times: " + ", ".join(f"{k} {hms(v)}" for k, v in res["stage_seconds"].items())]
    return "\n".join(lines)


# ---- helpers --------------------------------------------------------------------------------------


def hms(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.1f} s"
