"""Ranking metrics exactly as VLM2Vec (MMEB-V2) computes them.

Matched against ``TIGER-AI-Lab/VLM2Vec:src/eval_utils/metrics.py`` (class ``RankingMetrics``: ``hit_at_k``,
``precision_at_k``, ``recall_at_k``, ``f1_at_k``, ``average_precision_at_k``, ``ndcg_at_k`` and the MRR loop
in ``evaluate``; commit 6ac33bb7e3049a0054a5952090f02ee5348fc4ed), as driven by
``TIGER-AI-Lab/VLM2Vec:eval.py`` (``num_pred``/``num_data``, the metric list, key order) and fed by
``TIGER-AI-Lab/VLM2Vec:src/data/utils/dataset_utils.py`` (``load_qrels_mapping``: graded qrels keep only
``score > 0``, a document listed twice keeps its higher score).

A query is ``ranked`` (candidate ids, best first) plus ``relevance`` (id -> grade). The relevant set R is
the ids with grade > 0; every metric but nDCG only asks "is this id in R" (binary), nDCG uses the grades
(binary tasks pass grade 1, which makes the graded and the binary formulas agree exactly). With
``top = ranked[:k]`` and ``hits = |set(top) & R|``:

    hit@k        1 if hits > 0 else 0                        (0 when R is empty)
    precision@k  hits / k          (k, even when fewer than k were ranked; 0 when R is empty)
    recall@k     hits / |R|                                   (1.0 when R is empty)
    f1@k         2 p r / (p + r)                              (0 when p + r == 0)
    map@k        sum over positions i <= k holding a relevant id of (#relevant positions so far) / i,
                 divided by min(|R|, k)                       (0 when R is empty or nothing hit)
    mrr@k        1 / (position of the first relevant id in top)    (0 if none)
    ndcg@k       DCG(top) / IDCG, DCG = sum_i gain(rel_i) / log2(i + 1) (i = 1-based position),
                 gain = rel (linear) or 2^rel - 1 (exponential); IDCG = DCG of the grades of R sorted
                 descending, cut at k (relevant ids never retrieved count too); empty R -> IDCG := 1,
                 so nDCG = 0.

Edge cases, all as VLM2Vec does them:

* Duplicate ids in ``ranked`` (VLM2Vec's local candidate lists can repeat a name): hit, precision and
  recall count the distinct ids in the top k (set intersection); MRR takes the first occurrence; but
  AP and DCG walk the positions, so a repeated relevant id counts again and map@k / nDCG@k can exceed
  1 (e.g. ``[a, a]`` with R = {a}: map@5 = (1/1 + 2/2) / 1 = 2). The published
  VLM2Vec-V2.0-Qwen2VL-2B scores show this happening: RefCOCO-Matching and NExTQA are single-answer
  tasks with hit@k == recall@k, yet map@5 > mrr@5 (0.93325 vs 0.93025; 0.48158 vs 0.48140), which only a
  duplicated gold in the ranking produces.
* Duplicate labels: VLM2Vec de-duplicates them (``list(set(label))``) before anything else; a mapping has
  unique keys by construction. ``relevance_from_labels`` turns a raw label list (and optional graded
  scores) into the mapping the way VLM2Vec's pipeline does.
* No relevant id at all: hit = precision = f1 = map = mrr = nDCG = 0 but recall = 1.0 (VLM2Vec's
  convention "all 0 relevant items were recalled"); f1 is then 2*0*1/(0+1) = 0.
* MAP normalises by min(|R|, k), not |R|: with two relevant ids and the first at rank 1, map@1 = 1.
* Log base 2; position 1 has discount log2(2) = 1. Means over queries are ``np.mean``, as in VLM2Vec.

Where this cannot or does not follow VLM2Vec (guesses / deliberate choices):

* Grade pairing. VLM2Vec's ``evaluate`` re-orders the labels with ``list(set(...))`` and then zips them with
  ``rel_scores`` in the original order, so for a query with several relevant documents of *different*
  grades its nDCG pairs grades with the wrong documents, in an order set by Python's per-process string
  hash seed (not reproducible). Only graded nDCG is affected (e.g. ViDoRe_esg_reports_human_labeled_v2,
  the one published dataset where ndcg_linear != ndcg_exponential). Here each id keeps its own grade.
* Grades <= 0 in ``relevance`` are treated as "not relevant" (dropped): VLM2Vec's qrels loader drops them
  before the metrics see them; its metric code itself would count any listed label as relevant.
* k must be an integer >= 1 (VLM2Vec special-cases k = 0; MMEB only uses 1, 5, 10).
* ``aggregate([])`` returns 0.0 for every metric at ``KS`` and counts 0 (VLM2Vec: ``np.mean`` of an empty
  list is replaced by 0.0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Literal

import numpy as np

KS: tuple[int, ...] = (1, 5, 10)
# Order of the keys in VLM2Vec's score files: each metric at every k ascending, map and mrr last.
METRICS: tuple[str, ...] = (
    "hit",
    "ndcg_linear",
    "ndcg_exponential",
    "precision",
    "recall",
    "f1",
    "map",
    "mrr",
)

Gain = Literal["linear", "exponential"]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _relevant(relevance: Mapping[str, float]) -> dict[str, float]:
    """The relevant ids (grade > 0) with their grades as floats."""
    return {i: float(r) for i, r in relevance.items() if r > 0}


def _top(ranked: Iterable[str], k: int) -> list[str]:
    return list(islice(ranked, k))


def _hits(ranked: Sequence[str], rel: Mapping[str, float], k: int) -> int:
    return len(set(_top(ranked, k)).intersection(rel))


def hit_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """hit@k = 1 if any relevant id is in ranked[:k] else 0 (0 when nothing is relevant).

    >>> hit_at_k(["x", "a", "y"], {"a": 1}, 1), hit_at_k(["x", "a", "y"], {"a": 1}, 5)
    (0.0, 1.0)
    """
    _check_k(k)
    rel = _relevant(relevance)
    if not rel:
        return 0.0
    return 1.0 if _hits(ranked, rel, k) > 0 else 0.0


def precision_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """precision@k = |set(ranked[:k]) & R| / k (divides by k even if fewer were ranked; 0 if R is empty).

    >>> precision_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 5)  # 2 / 5
    0.4
    """
    _check_k(k)
    rel = _relevant(relevance)
    if not rel:
        return 0.0
    return _hits(ranked, rel, k) / k


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """recall@k = |set(ranked[:k]) & R| / |R|, and 1.0 when R is empty (VLM2Vec's convention).

    >>> recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 5)  # 2 / 3
    0.6666666666666666
    >>> recall_at_k(["x"], {}, 5)
    1.0
    """
    _check_k(k)
    rel = _relevant(relevance)
    if not rel:
        return 1.0
    return _hits(ranked, rel, k) / len(rel)


def f1_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """f1@k = 2 p r / (p + r) with p = precision@k, r = recall@k; 0 when p + r == 0.

    >>> f1_at_k(["a", "x"], {"a": 1}, 5)  # p = 1/5, r = 1: 2 * 0.2 / 1.2 = 1/3
    0.33333333333333337
    """
    p = precision_at_k(ranked, relevance, k)
    r = recall_at_k(ranked, relevance, k)
    if (p + r) == 0:
        return 0.0
    return 2 * (p * r) / (p + r)


def average_precision_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """AP@k = (sum over positions i <= k holding a relevant id of hits_so_far / i) / min(|R|, k).

    Positions are walked as given, so a relevant id ranked twice counts twice (VLM2Vec). 0 when R is
    empty or no relevant id is in the top k.

    >>> average_precision_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 5)  # (1/1 + 2/3) / min(2, 5)
    0.8333333333333333
    """
    _check_k(k)
    rel = _relevant(relevance)
    if not rel:
        return 0.0
    score = 0.0
    num_hits = 0
    for i, p in enumerate(_top(ranked, k)):
        if p in rel:
            num_hits += 1
            score += num_hits / (i + 1.0)
    if not num_hits:
        return 0.0
    return score / min(len(rel), k)


def reciprocal_rank_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """RR@k = 1 / (1-based position of the first relevant id in ranked[:k]); 0 if there is none.

    >>> reciprocal_rank_at_k(["x", "y", "a"], {"a": 1}, 5)  # 1 / 3
    0.3333333333333333
    """
    _check_k(k)
    rel = _relevant(relevance)
    for i, p in enumerate(_top(ranked, k)):
        if p in rel:
            return 1.0 / (i + 1)
    return 0.0


def _dcg(grades: Sequence[float], gain: Gain) -> float:
    if gain == "linear":
        return float(sum(g / np.log2(i + 2) for i, g in enumerate(grades)))
    if gain == "exponential":
        return float(sum((2**g - 1) / np.log2(i + 2) for i, g in enumerate(grades)))
    raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int, gain: Gain = "linear") -> float:
    """nDCG@k = DCG(ranked[:k]) / IDCG with DCG = sum_i gain(rel_i) / log2(i + 1), i the 1-based position.

    gain(rel) = rel ("linear") or 2**rel - 1 ("exponential"); unjudged ids have rel 0. IDCG is the DCG of
    all relevant grades sorted descending and cut at k, whether retrieved or not. Empty R: IDCG := 1, so
    nDCG = 0. A relevant id ranked twice is counted twice (VLM2Vec), which can give values above 1.

    >>> ndcg_at_k(["x", "a"], {"a": 1}, 5)  # (1 / log2 3) / 1
    0.6309297535714575
    >>> ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 1, "exponential")  # (2^1 - 1) / (2^2 - 1) = 1 / 3
    0.3333333333333333
    """
    _check_k(k)
    rel = _relevant(relevance)
    grades = [rel.get(item, 0) for item in _top(ranked, k)]
    ideal = sorted(rel.values(), reverse=True)[:k]
    dcg = _dcg(grades, gain)
    idcg = _dcg(ideal, gain) if ideal else 1
    return dcg / idcg if idcg > 0 else 0.0


def query_metrics(
    ranked: Sequence[str], relevance: Mapping[str, float], ks: Iterable[int] = KS
) -> dict[str, float]:
    """All ``METRICS`` of one query at each k, keyed ``"{metric}@{k}"`` in VLM2Vec's order.

    ``ranked``: candidate ids best first (only the first max(ks) are looked at); ``relevance``: id -> grade,
    > 0 meaning relevant. Keys: hit@k..., ndcg_linear@k..., ndcg_exponential@k..., precision@k...,
    recall@k..., f1@k..., map@k..., mrr@k..., each over the ks ascending.

    >>> m = query_metrics(["x", "y", "a"], {"a": 1}, ks=(1, 5))
    >>> m["hit@1"], m["hit@5"], m["precision@5"], m["mrr@5"], m["ndcg_linear@5"]  # a at rank 3
    (0.0, 1.0, 0.2, 0.3333333333333333, 0.5)
    """
    ks = sorted(set(ks))
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        _check_k(k)
    top = _top(ranked, ks[-1])
    per_metric = {
        "hit": hit_at_k,
        "ndcg_linear": lambda r, rel, k: ndcg_at_k(r, rel, k, "linear"),
        "ndcg_exponential": lambda r, rel, k: ndcg_at_k(r, rel, k, "exponential"),
        "precision": precision_at_k,
        "recall": recall_at_k,
        "f1": f1_at_k,
        "map": average_precision_at_k,
        "mrr": reciprocal_rank_at_k,
    }
    return {f"{name}@{k}": per_metric[name](top, relevance, k) for name in METRICS for k in ks}


def aggregate(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over the queries, plus ``num_pred`` and ``num_data`` (both = number of queries).

    This is the layout of a VLM2Vec ``{dataset}_score.json`` / a published per-dataset entry: the metric
    keys in the order of the first query's dict, then num_pred, num_data (ints). Every query must carry
    the same keys. With no queries every metric at ``KS`` is 0.0.

    >>> aggregate([{"hit@1": 1.0}, {"hit@1": 0.0}])
    {'hit@1': 0.5, 'num_pred': 2, 'num_data': 2}
    """
    if not per_query:
        out: dict[str, float] = {f"{name}@{k}": 0.0 for name in METRICS for k in KS}
    else:
        keys = list(per_query[0])
        for i, q in enumerate(per_query):
            if set(q) != set(keys):
                raise ValueError(f"query {i} has metric keys {sorted(q)}, expected {sorted(keys)}")
        out = {key: float(np.mean([q[key] for q in per_query])) for key in keys}
    out["num_pred"] = len(per_query)
    out["num_data"] = len(per_query)
    return out


def relevance_from_labels(
    labels: str | Sequence[str], rel_scores: Sequence[float] | None = None
) -> dict[str, float]:
    """Raw labels (as a VLM2Vec row gives them) -> the ``relevance`` mapping the metrics take.

    Binary (no ``rel_scores``): each distinct label gets grade 1 (VLM2Vec's ``list(set(label))``).
    Graded: ``rel_scores[i]`` belongs to ``labels[i]`` (same length required, as VLM2Vec asserts); grades
    <= 0 are dropped and a label listed twice keeps its highest grade (VLM2Vec's ``load_qrels_mapping``).

    >>> relevance_from_labels(["a", "a", "b"])
    {'a': 1.0, 'b': 1.0}
    >>> relevance_from_labels(["a", "b", "a"], [1, 0, 2])
    {'a': 2.0}
    """
    if isinstance(labels, str):
        labels = [labels]
    if rel_scores is None:
        return dict.fromkeys(labels, 1.0)
    if len(rel_scores) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(rel_scores)} rel_scores")
    out: dict[str, float] = {}
    for label, score in zip(labels, rel_scores, strict=True):
        if score > 0:
            out[label] = max(out.get(label, 0.0), float(score))
    return out


def meta_task(modality: str, meta: str) -> str:
    """The group a dataset is averaged in: its modality and meta-task, e.g. "image CLS"."""
    return f"{modality} {meta}"


def group_means(scores: Mapping[str, float], group_of: Mapping[str, str]) -> dict[str, float]:
    """Plain mean of the task scores in each group (MMEB's rule: every dataset counts once, whatever its
    size), groups in the order their first task comes; tasks without a group are left out. Used for the
    meta-task tables of `mmemb eval`, `mmemb reproduce` and the λ sweep."""
    groups: dict[str, list[float]] = {}
    for task, score in scores.items():
        if task in group_of:
            groups.setdefault(group_of[task], []).append(float(score))
    return {g: sum(v) / len(v) for g, v in groups.items()}
