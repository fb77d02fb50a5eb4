"""The `mmemb reason select` and `mmemb reason inspect` jobs: score, select, write, summarise.

select writes into OUT/:
    selection.jsonl  per pair: label (think | no_think), chosen k and rationale (or null), weights, the
                     donor of its swapped control, and every candidate's utilities
    summary.json     settings (data, candidates, scorer, rule) and per task: pairs, think ratio,
                     candidates, malformed, utility histogram
    utilities.png    the utility histograms per task
inspect writes OUT/inspect.json and prints the same as text.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data.pairs import Pair, dataset_fingerprint
from ..embedder import Embedder
from ..io import atomic_write, read_jsonl
from . import candidates as cand_io
from .format import empty_completion, think_completion
from .scorers import UTILITIES
from .scoring import (
    ForcedEmbedder,
    Scores,
    ScoreSettings,
    candidate_slots,
    first_valid,
    pick_donors,
    score_pairs,
)
from .select import select

HIST_BINS = 20


def run_select(
    embedder: Embedder,
    pairs: list[Pair],
    candidates_path: Path,
    out: Path,
    cache_root: Path,
    *,
    utility: str = "pair",
    rule: str = "hard",
    delta: float = 0.0,
    temperature: float = 0.05,
    settings: ScoreSettings | None = None,
) -> dict:
    """Score, select and write OUT/ (module docstring). Returns the summary."""
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {list(UTILITIES)}")
    grouped = cand_io.load_for(pairs, candidates_path)
    settings = settings or ScoreSettings()
    scores = score_pairs(embedder, pairs, grouped, cache_root, settings)
    sel = select(scores.utilities[utility], rule=rule, delta=delta, temperature=temperature)
    meta = cand_io.meta_path(Path(candidates_path))
    info = {
        "data": dataset_fingerprint(pairs),
        "candidates": str(candidates_path),
        "teacher": json.loads(meta.read_text()).get("teacher") if meta.is_file() else None,
        "scorer": embedder.fingerprint(),
        "utility": utility,
        "rule": rule,
        "delta": delta,
        "temperature": temperature,
        "scoring": asdict(settings) | {"progress": None},
    }
    rows = selection_rows(scores, sel, utility)
    summary = {"settings": info, **summarize(scores, sel, utility)}
    summary["embedded_now"] = scores.embedded_now
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "selection.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_utilities(summary, out / "utilities.png")
    return summary


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def selection_rows(scores: Scores, sel, utility: str) -> list[dict]:
    rows = []
    for i, p in enumerate(scores.pairs):
        k = int(sel.chosen[i])
        chosen = scores.candidates[i][k] if k >= 0 else None
        rows.append(
            {
                "pair_id": p.id,
                "task": p.task,
                "label": "think" if sel.think[i] else "no_think",
                "chosen_k": k if k >= 0 else None,
                "rationale": {"think": chosen["think"], "answer": chosen["answer"]} if chosen else None,
                "utility": _num(scores.utilities[utility][i, k]) if k >= 0 else None,
                "weights": [round(float(w), 6) for w in sel.weights[i]],
                "donor": scores.donors[i],
                "candidates": [
                    {
                        "k": c["k"],
                        "valid": c["valid"],
                        "problem": c["problem"],
                        "text": c["text"],
                        "utilities": {name: _num(u[i, c["k"]]) for name, u in scores.utilities.items()},
                    }
                    for c in scores.candidates[i]
                    if c is not None
                ],
            }
        )
    return rows


def summarize(scores: Scores, sel, utility: str) -> dict:
    u = scores.utilities[utility]
    finite = u[~np.isnan(u)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, HIST_BINS + 1)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(scores.pairs):
        groups.setdefault(p.task, []).append(i)

    def block(idx: list[int]) -> dict:
        rows = [c for i in idx for c in scores.candidates[i] if c is not None]
        vals = u[idx][~np.isnan(u[idx])]
        think = int(sel.think[idx].sum())
        return {
            "pairs": len(idx),
            "think": think,
            "no_think": len(idx) - think,
            "think_ratio": round(think / len(idx), 4) if idx else 0.0,
            "candidates": len(rows),
            "malformed": sum(not c["valid"] for c in rows),
            "utility_mean": _num(vals.mean()) if vals.size else None,
            "utility_hist": {
                "edges": [round(float(e), 6) for e in edges],
                "counts": np.histogram(vals, bins=edges)[0].tolist(),
            },
        }

    return {
        "overall": block(list(range(len(scores.pairs)))),
        "tasks": {task: block(idx) for task, idx in groups.items()},
    }


def format_summary(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        f"selection: utility={s['utility']} rule={s['rule']} delta={s['delta']} (scorer {s['scorer']})",
        f"{'task':<22} {'pairs':>6} {'think%':>7} {'cands':>6} {'malformed':>9} {'mean u':>8}",
    ]
    for name, b in [*summary["tasks"].items(), ("overall", summary["overall"])]:
        mean = "-" if b["utility_mean"] is None else f"{b['utility_mean']:.4f}"
        lines.append(
            f"{name:<22} {b['pairs']:>6} {100 * b['think_ratio']:>6.1f}% {b['candidates']:>6} "
            f"{b['malformed']:>9} {mean:>8}"
        )
    return "\n".join(lines)


def plot_utilities(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"].items())
    cols = min(3, len(tasks)) or 1
    rows = math.ceil(len(tasks) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    delta = summary["settings"]["delta"]
    for ax, (name, b) in zip(axes.flat, tasks, strict=False):
        edges, counts = b["utility_hist"]["edges"], b["utility_hist"]["counts"]
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        ax.axvline(delta, color="red", lw=1, ls="--")
        ax.set_title(f"{name} (think {100 * b['think_ratio']:.0f}%)", fontsize=9)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(f"utility '{summary['settings']['utility']}' of valid candidates; red: delta", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# ---- inspect ------------------------------------------------------------------------------------------
def run_inspect(
    embedder: Embedder,
    pairs: list[Pair],
    candidates_path: Path,
    cache_root: Path,
    *,
    selection_path: Path | None = None,
    n: int = 64,
    examples: int = 3,
    settings: ScoreSettings | None = None,
) -> dict:
    """Reasoning sensitivity of `embedder` and, given a selection, utilities and kept / rejected examples.

    Sensitivity: for up to n pairs with a valid rationale r (the selected one when a selection is given,
    else the first valid), gen embeddings of the query teacher-forced with r, with r' (another pair's,
    as in selection) and with an empty rationale. A model that reads its reasoning gives cos(r, r') and
    cos(r, empty) well below 1; UME-R1's gen embedding shows 0.95-0.98 (FACTS §2), the failure to beat.
    `cos(other queries)` (mean cosine between different queries' embeddings with their own rationales) is
    the floor: how similar this model makes *unrelated* inputs.
    """
    grouped = cand_io.load_for(pairs, candidates_path)
    settings = settings or ScoreSettings()
    tokens = embedder.config.tokens
    slots, _ = candidate_slots(pairs, grouped)
    chosen: dict[str, dict] = {}
    sel_rows: list[dict] = []
    if selection_path:
        sel_rows = [row for _, row in read_jsonl(Path(selection_path))]
        chosen = {r["pair_id"]: r["rationale"] for r in sel_rows if r["rationale"]}
    donors = pick_donors(pairs, slots, settings.seed)
    index = {p.id: i for i, p in enumerate(pairs)}
    picked = []
    for i, p in enumerate(pairs):
        r = chosen.get(p.id) or first_valid(slots[i])
        if r and donors[i]:
            picked.append((i, r, first_valid(slots[index[donors[i]]])))
    step = max(1, len(picked) // n) if n else 1
    picked = picked[::step][:n]
    forced = ForcedEmbedder(embedder, cache_root, settings)
    report: dict = {"model": embedder.fingerprint(), "pairs": len(picked)}
    if picked:
        own = forced(
            [(pairs[i].query, think_completion(r["think"], r["answer"], tokens)) for i, r, _ in picked]
        )
        swap = forced(
            [(pairs[i].query, think_completion(d["think"], d["answer"], tokens)) for i, _, d in picked]
        )
        empty = forced([(pairs[i].query, empty_completion(tokens)) for i, _, _ in picked])
        other = own @ own.T  # (n, n)
        off = other[~np.eye(len(picked), dtype=bool)]
        report["sensitivity"] = {
            "cos(true, swapped)": _stats(np.einsum("nd,nd->n", own, swap)),
            "cos(true, empty)": _stats(np.einsum("nd,nd->n", own, empty)),
            "cos(other queries)": _stats(off) if off.size else None,
        }
    if sel_rows:
        report["utilities"] = _utility_quantiles(sel_rows)
        report["examples"] = _examples(sel_rows, examples)
    return report


def _stats(x: np.ndarray) -> dict:
    return {
        "mean": round(float(x.mean()), 4),
        "p10": round(float(np.quantile(x, 0.1)), 4),
        "median": round(float(np.median(x)), 4),
        "p90": round(float(np.quantile(x, 0.9)), 4),
    }


def _utility_quantiles(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    names = [
        n for n in UTILITIES if any(c["utilities"].get(n) is not None for r in rows for c in r["candidates"])
    ]
    for name in names:
        for task in sorted({r["task"] for r in rows}) + ["overall"]:
            vals = [
                c["utilities"][name]
                for r in rows
                if task in ("overall", r["task"])
                for c in r["candidates"]
                if c["utilities"].get(name) is not None
            ]
            if vals:
                out.setdefault(name, {})[task] = _stats(np.array(vals))
    return out


def _examples(rows: list[dict], n: int) -> dict:
    """The n kept rationales with the highest utility, the n valid ones rejected with the lowest, and n
    malformed ones."""
    kept = sorted((r for r in rows if r["label"] == "think"), key=lambda r: -(r["utility"] or 0))[:n]
    rejected, malformed = [], []
    for r in rows:
        for c in r["candidates"]:
            if not c["valid"]:
                malformed.append((r, c))
            elif c["k"] != r["chosen_k"]:
                rejected.append((r, c))
    rejected.sort(key=lambda rc: rc[1]["utilities"].get("pair") or 0)

    def show(pairs: list) -> list[dict]:
        return [
            {
                "pair_id": r["pair_id"],
                "k": c["k"],
                "problem": c["problem"],
                "utilities": c["utilities"],
                "text": c["text"],
            }
            for r, c in pairs[:n]
        ]

    return {
        "kept": [
            {"pair_id": r["pair_id"], "utility": r["utility"], "rationale": r["rationale"]} for r in kept
        ],
        "rejected": show(rejected),
        "malformed": show(malformed),
    }


def format_inspect(report: dict) -> str:
    lines = [f"model {report['model']}: reasoning sensitivity over {report['pairs']} pairs"]
    for name, st in (report.get("sensitivity") or {}).items():
        if st:
            lines.append(
                f"  {name:<20} mean {st['mean']:.4f}  p10 {st['p10']:.4f}  median {st['median']:.4f}  p90 {st['p90']:.4f}"
            )
    for name, per_task in (report.get("utilities") or {}).items():
        lines.append(f"utility '{name}' (median [p10, p90]):")
        for task, st in per_task.items():
            lines.append(f"  {task:<22} {st['median']:+.4f} [{st['p10']:+.4f}, {st['p90']:+.4f}]")
    ex = report.get("examples")
    if ex:
        lines.append("kept (highest utility):")
        for e in ex["kept"]:
            lines.append(
                f"  {e['pair_id']} u={e['utility']}: {e['rationale']['think']} -> {e['rationale']['answer']}"
            )
        for title, key in (("rejected (lowest utility):", "rejected"), ("malformed:", "malformed")):
            lines.append(title)
            for e in ex[key]:
                why = e["problem"] or f"pair utility {e['utilities'].get('pair')}"
                lines.append(f"  {e['pair_id']} k={e['k']} ({why}): {e['text'][:160]!r}")
    return "\n".join(lines)
