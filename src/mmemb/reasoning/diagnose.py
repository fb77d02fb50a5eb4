"""What reasoning adds to a trained model, measured on pairs it was not trained on (`mmemb reason diagnose`).

For each pair (q, t) the query is ranked against its candidate set C = {t} ∪ the pair's own negatives from
the data (the row's other candidates), or, for a pair without any, every other target of its task; hit@1 is
1 when t ranks first. The query vector is, in turn:

    none      E(q)        no-think completion (teacher-forced): the model without reasoning
    teacher   E(q⊕r_k)    each valid teacher candidate r_k teacher-forced; "mean" averages hit@1 over the
                          pair's valid candidates, "best" takes the best one (what selection could keep:
                          the upper bound of what the teacher's reasoning can add to this model)
    swapped   E(q⊕r′)     another pair's rationale (the format-only control, as in selection)
    named     E(q⊕r*)     a rationale that names the target's text ("It is X." / "X"): not a rationale
                          anyone could write without the label, but it shows whether the gen embedding
                          follows what its rationale says at all (pairs whose target has no text: as none)
    own       think mode  the model writes its own rationale (greedy, `max_new_tokens`) and embeds

A pair without a valid teacher candidate counts as `none` under teacher (it would not reason), so every
comparison is over the same pairs; differences come with a paired bootstrap interval (eval/stats.py).
Sensitivity: the mean cos(E(q⊕r), E(q⊕r′)) over pairs with a rationale and a donor (UME-R1's users measured
0.95-0.98 on UME-R1: its gen embedding barely reads what the rationale says), and cos(E(q⊕r), E(q)). With
`own`, also cos(E(q⊕own), E(q⊕own′)): the model's own well-formed rationale against another query's (a
same-task donor with another target), both teacher-forced into q; it needs no teacher, so it is measured on
test queries too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache import content_key
from ..data.pairs import Pair
from ..embedder import Embedder
from ..eval.stats import paired_ci
from . import candidates as cand_io
from .format import no_think_completion, parse_rationale, think_completion
from .scoring import ForcedEmbedder, ScoreSettings, candidate_slots, first_valid, pick_donors

COMPARISONS = {  # name -> (a, b): b - a is reported with its interval
    "teacher (mean) - none": ("none", "teacher_mean"),
    "teacher (best) - none": ("none", "teacher_best"),
    "teacher (mean) - swapped": ("swapped", "teacher_mean"),
    "named - none": ("none", "named"),
    "own - none": ("none", "own"),
}


def run_diagnose(
    embedder: Embedder,
    pairs: list[Pair],
    candidates_path: Path,
    cache_root: Path,
    *,
    own: bool = True,
    max_new_tokens: int = 64,
    settings: ScoreSettings | None = None,
) -> dict:
    """The report (module docstring): per task and overall hit@1 (x100) of each query vector, the share of
    well-formed rationales (teacher's and own), the sensitivity cosines, and paired intervals."""
    s = settings or ScoreSettings()
    tokens = embedder.config.tokens
    no_think = no_think_completion(tokens)
    slots, K = candidate_slots(pairs, cand_io.load_for(pairs, candidates_path))
    forced = ForcedEmbedder(embedder, cache_root, s)
    N = len(pairs)

    def think(row: dict) -> str:
        return think_completion(row["think"], row["answer"], tokens)

    T = forced([(p.target, no_think) for p in pairs])  # (N, D)
    Q0 = forced([(p.query, no_think) for p in pairs])  # (N, D)
    # per pair its candidate vectors (m_i, D), the target first
    C = _candidate_sets(pairs, T, lambda xs: forced([(x, no_think) for x in xs]))
    valid = [(i, k) for i in range(N) for k in range(K) if slots[i][k] and slots[i][k]["valid"]]
    QR = np.full((N, K, T.shape[1]), np.nan, dtype=np.float32)  # (N, K, D)
    if valid:
        for (i, k), v in zip(
            valid, forced([(pairs[i].query, think(slots[i][k])) for i, k in valid]), strict=True
        ):
            QR[i, k] = v
    donors = pick_donors(pairs, slots, s.seed)
    index = {p.id: j for j, p in enumerate(pairs)}
    with_donor = [i for i in range(N) if donors[i] is not None]
    QS = np.full_like(T, np.nan)  # (N, D)
    if with_donor:
        QS[with_donor] = forced(
            [(pairs[i].query, think(first_valid(slots[index[donors[i]]]))) for i in with_donor]
        )

    hit = {"none": _hits(Q0, C)}  # name -> (N,) 0/1
    per_k = np.stack([_hits(QR[:, k], C) for k in range(K)], 1) if K else np.full((N, 0), np.nan)  # (N, K)
    has = ~np.isnan(per_k).all(1) if K else np.zeros(N, bool)
    hit["teacher_mean"] = np.where(has, np.nanmean(np.where(has[:, None], per_k, 0.0), 1), hit["none"])
    hit["teacher_best"] = np.where(has, np.nanmax(np.where(has[:, None], per_k, 0.0), 1), hit["none"])
    hit["swapped"] = np.where(np.isnan(QS[:, 0]), hit["none"], _hits(QS, C))
    named = [i for i, p in enumerate(pairs) if (p.target.text or "").strip()]
    QN = np.full_like(T, np.nan)  # (N, D)
    if named:
        says = [think_completion(f"It is {pairs[i].target.text.strip()}.", pairs[i].target.text.strip(), tokens)
                for i in named]  # fmt: skip
        QN[named] = forced([(pairs[i].query, c) for i, c in zip(named, says, strict=True)])
    hit["named"] = np.where(np.isnan(QN[:, 0]), hit["none"], _hits(QN, C))
    own_ok = np.zeros(N, bool)
    QO = QOS = np.full_like(T, np.nan)
    if own:
        out = embedder.encode([p.query for p in pairs], mode="think", batch_size=s.batch_size,
                              progress=s.progress, max_new_tokens=max_new_tokens)  # fmt: skip
        hit["own"] = _hits(out.vectors, C)
        for i, (text, found) in enumerate(zip(out.texts, out.gen_emb_found, strict=True)):
            own_ok[i] = found and parse_rationale(text.removesuffix(tokens.gen_emb), tokens).valid
        examples = [{"pair_id": pairs[i].id, "text": out.texts[i]} for i in range(0, N, max(1, N // 6))][:6]
        # sensitivity of the model's own reasoning: its rationale against another query's own rationale, both
        # teacher-forced into q (what the done-when of issue 17 asks on test queries, which have no teacher)
        parsed = [parse_rationale(t.removesuffix(tokens.gen_emb), tokens) for t in out.texts]
        own_slots = [[{"valid": True, "think": r.think, "answer": r.answer}] if own_ok[i] else [None]
                     for i, r in enumerate(parsed)]  # fmt: skip
        own_donors = pick_donors(pairs, own_slots, s.seed)
        own_sens = [i for i in range(N) if own_ok[i] and own_donors[i] is not None]
        QO, QOS = np.full_like(T, np.nan), np.full_like(T, np.nan)  # (N, D): q+own_i, q+own_donor
        if own_sens:
            mine = forced([(pairs[i].query, think(own_slots[i][0])) for i in own_sens])
            theirs = forced([(pairs[i].query, think(own_slots[index[own_donors[i]]][0])) for i in own_sens])
            QO[own_sens], QOS[own_sens] = mine, theirs
    ok = np.array([[bool(r and r["valid"]) for r in slots[i]] for i in range(N)], bool).reshape(N, K)
    first = np.array([next((k for k in range(K) if not np.isnan(QR[i, k, 0])), -1) for i in range(N)])
    sens = {i for i in with_donor if first[i] >= 0}  # pairs with a rationale and a swapped control
    tasks = list(dict.fromkeys(p.task for p in pairs))
    rows = {t: [i for i, p in enumerate(pairs) if p.task == t] for t in tasks}

    def block(idx: list[int]) -> dict:
        idx_s = [i for i in idx if i in sens]
        qr = QR[idx_s, first[idx_s]] if idx_s else np.zeros((0, T.shape[1]))
        return {
            "pairs": len(idx),
            "candidates": int(np.mean([len(C[i]) for i in idx])),
            "hit@1": {name: round(100 * float(np.mean(h[idx])), 1) for name, h in hit.items()},
            "teacher_valid": round(100 * float(ok[idx].mean()), 1) if K else 0.0,
            "own_well_formed": round(100 * float(own_ok[idx].mean()), 1) if own else None,
            "cos(q+r, q+r')": round(float(np.einsum("nd,nd->n", qr, QS[idx_s]).mean()), 4) if idx_s else None,
            "cos(q+r, q)": round(float(np.einsum("nd,nd->n", qr, Q0[idx_s]).mean()), 4) if idx_s else None,
            "cos(q+own, q+own')": _mean_cos(QO[idx], QOS[idx]) if own else None,
        }

    overall = block(list(range(N)))
    # the overall is the mean over tasks, as MMEB reports it
    overall["hit@1"] = {
        n: round(100 * float(np.mean([h[rows[t]].mean() for t in tasks])), 1) for n, h in hit.items()
    }
    report = {
        "model": embedder.fingerprint(),
        "pairs": N,
        "tasks": {t: block(rows[t]) for t in tasks},
        "overall": overall,
        "differences": {
            name: paired_ci({t: hit[a][rows[t]] for t in tasks}, {t: hit[b][rows[t]] for t in tasks})
            for name, (a, b) in COMPARISONS.items()
            if a in hit and b in hit
        },
    }
    if own:
        report["own_examples"] = examples
    return report


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean row cosine of unit vectors (n, D) over the rows both have (NaN rows: none)."""
    have = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0]) if len(a) else np.zeros(0, bool)
    return round(float(np.einsum("nd,nd->n", a[have], b[have]).mean()), 4) if have.any() else None


def _candidate_sets(pairs: list[Pair], T: np.ndarray, embed) -> list[np.ndarray]:
    """Per pair its candidate vectors (m_i, D), the target first: the pair's own negatives from the data,
    or, when it has none, the other distinct targets of its task (the global ranking of its task)."""
    flat = [x for p in pairs for x in p.negatives]
    vecs = embed(flat) if flat else np.zeros((0, T.shape[1]), np.float32)
    keys = [content_key(p.target) for p in pairs]
    sets, pos = [], 0
    for i, p in enumerate(pairs):
        if p.negatives:
            sets.append(np.concatenate([T[i : i + 1], vecs[pos : pos + len(p.negatives)]]))
            pos += len(p.negatives)
            continue
        seen, others = {keys[i]}, []
        for j, q in enumerate(pairs):
            if q.task == p.task and keys[j] not in seen:
                seen.add(keys[j])
                others.append(j)
        sets.append(np.concatenate([T[i : i + 1], T[others]]))
    return sets


def _hits(V: np.ndarray, C: list[np.ndarray]) -> np.ndarray:
    """(N,) 1.0 where row i's vector ranks its target (C[i][0]) strictly first, NaN where V[i] is NaN."""
    out = np.full(len(C), np.nan)
    for i, c in enumerate(C):
        if not np.isnan(V[i, 0]):
            sims = c @ V[i]  # (m,)
            out[i] = float(len(sims) == 1 or sims[0] > sims[1:].max())
    return out


def format_diagnose(report: dict) -> str:
    """A markdown table per task and the intervals."""
    names = list(report["overall"]["hit@1"])
    cols = ["pairs", "cands", *names, "teacher valid %", "own well-formed %", "cos(q+r, q+r')", "cos(q+r, q)",
            "cos(q+own, q+own')"]  # fmt: skip
    head = "| task | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(names) + 8)]
    for task, b in [*report["tasks"].items(), ("**overall**", report["overall"])]:
        cells = [b["pairs"], b["candidates"], *(b["hit@1"][n] for n in names), b["teacher_valid"],
                 b["own_well_formed"], b["cos(q+r, q+r')"], b["cos(q+r, q)"], b.get("cos(q+own, q+own')")]  # fmt: skip
        lines.append(f"| {task} | " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for name, ci in report["differences"].items():
        lo, hi = ci["ci95"]
        lines.append(f"- {name}: {ci['diff']:+.1f} (95% CI {lo:+.1f} to {hi:+.1f}, {ci['queries']} pairs)")
    return "\n".join(lines)
