"""`mmemb reason inspect`: the reasoning sensitivity of a model; utilities; kept and rejected examples.

It writes OUT/inspect.json and prints the same as text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.pairs import Pair
from ..embedder import Embedder
from ..io import read_jsonl
from . import candidates as cand_io
from .format import empty_completion, think_completion
from .scoring import UTILITIES, ForcedEmbedder, ScoreSettings, candidate_slots, first_valid, pick_donors


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
