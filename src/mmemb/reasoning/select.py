"""`mmemb reason select`: score every candidate (scoring.py), choose by a rule, write the selection.

Rules, from each pair's candidate utilities to a chosen rationale and a think/no-think label:

    utilities: (N, K) float, NaN where candidate k is missing or malformed (never selectable)

    hard   chosen = argmax_k u;  weight 1 on it
    soft   weights = softmax(u / temperature) over the valid candidates (training may sample by them);
           chosen = argmax_k u
    all    every valid candidate, equal weights (the "no selection" ablation); label think if any is valid

For hard and soft, the label is *think* when the best utility exceeds `delta`, else *no-think* (chosen = -1,
weights 0): reasoning that does not beat its counterfactual by delta is not worth its cost.

select writes into OUT/:
    selection.jsonl  per pair: label (think | no_think), chosen k and rationale (or null), weights, the
                     donor of its swapped control, and every candidate's utilities
    summary.json     settings (data, candidates, scorer, rule) and per task: pairs, think ratio,
                     candidates, malformed, utility histogram
    utilities.png    the utility histograms per task
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.pairs import Pair, dataset_fingerprint
from ..embedder import Embedder
from ..io import atomic_write
from . import candidates as cand_io
from .config import RULES, UTILITIES
from .scoring import Scores, ScoreSettings, score_pairs

HIST_BINS = 20


@dataclass
class Selection:
    chosen: np.ndarray  # (N,) int, -1 = no rationale (no-think)
    think: np.ndarray  # (N,) bool
    weights: np.ndarray  # (N, K) float, rows sum to 1 where think, 0 elsewhere


def select(
    utilities: np.ndarray, rule: str = "hard", delta: float = 0.0, temperature: float = 0.05
) -> Selection:
    """Apply a rule to (N, K) utilities (see the module docstring).

    Example: u = [[0.3, nan, 0.1], [-0.2, -0.1, nan]], rule hard, delta 0
      -> chosen [0, -1], think [True, False], weights [[1, 0, 0], [0, 0, 0]]
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {list(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    u = np.asarray(utilities, dtype=np.float64)
    valid = ~np.isnan(u)  # (N, K)
    any_valid = valid.any(axis=1)  # (N,)
    filled = np.where(valid, u, -np.inf)
    best = np.where(any_valid, filled.max(axis=1, initial=-np.inf), -np.inf)  # (N,)
    chosen = np.where(any_valid, filled.argmax(axis=1), -1)
    if rule == "all":
        think = any_valid
        weights = valid / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        return Selection(np.where(think, chosen, -1), think, weights * think[:, None])
    think = any_valid & (best > delta)
    if rule == "hard":
        weights = np.zeros_like(u)
        rows = np.nonzero(think)[0]
        weights[rows, chosen[rows]] = 1.0
    else:
        shift = np.where(any_valid, best, 0.0)[:, None]  # (N, 1): the max, for a stable softmax
        z = np.where(valid, (np.where(valid, u, 0.0) - shift) / temperature, 0.0)
        e = np.where(valid, np.exp(z), 0.0)
        weights = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
        weights = weights * think[:, None]
    return Selection(np.where(think, chosen, -1), think, weights)


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


def json_number(x: float) -> float | None:
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
                "utility": json_number(scores.utilities[utility][i, k]) if k >= 0 else None,
                "weights": [round(float(w), 6) for w in sel.weights[i]],
                "donor": scores.donors[i],
                "candidates": [
                    {
                        "k": c["k"],
                        "valid": c["valid"],
                        "problem": c["problem"],
                        "text": c["text"],
                        "utilities": {
                            name: json_number(u[i, c["k"]]) for name, u in scores.utilities.items()
                        },
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
            "utility_mean": json_number(vals.mean()) if vals.size else None,
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
