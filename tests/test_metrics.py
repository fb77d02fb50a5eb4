"""Ranking metrics against hand-computed values (VLM2Vec's definitions; see mmemb.eval.metrics).

Every expected value below is written out as arithmetic, never obtained by calling the code under test.
Notation: R = relevant set, top = ranked[:k], hits = |set(top) & R|, discount at 1-based rank i = log2(i+1).
"""

from __future__ import annotations

import doctest
import json
import math
import random

import numpy as np
import pytest

from mmemb.eval import metrics
from mmemb.eval.metrics import (
    KS,
    METRICS,
    aggregate,
    average_precision_at_k,
    ndcg_at_k,
    query_metrics,
    relevance_from_labels,
)

from .conftest import PUBLISHED_SCORES, needs_shared

FILLER = [f"x{i}" for i in range(20)]  # never relevant

# The 24 metric keys of a published per-dataset entry, in the file's order (then num_pred, num_data).
PUBLISHED_KEYS = [f"{m}@{k}" for m in METRICS for k in KS]


def check(got: dict[str, float], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_keys_and_order_match_the_published_files() -> None:
    m = query_metrics(["a"], {"a": 1})
    assert list(m) == PUBLISHED_KEYS
    assert PUBLISHED_KEYS[:3] == ["hit@1", "hit@5", "hit@10"] and PUBLISHED_KEYS[-1] == "mrr@10"
    assert list(aggregate([m])) == PUBLISHED_KEYS + ["num_pred", "num_data"]


def test_single_relevant_at_rank_1() -> None:
    # ranked = [g, x0, x1, ...], R = {g}: hits = 1 at every k.
    # precision@k = 1/k; recall = 1/1; f1@k = 2*(1/k)*1 / (1/k + 1) = 2/(k+1): 1, 2/6, 2/11.
    # AP@k = (1/1) / min(1, k) = 1; RR = 1/1; DCG = 1/log2(2) = 1 = IDCG -> nDCG 1.
    m = query_metrics(["g", *FILLER], {"g": 1})
    check(m, {"hit@1": 1, "hit@5": 1, "hit@10": 1})
    check(m, {"precision@1": 1, "precision@5": 0.2, "precision@10": 0.1})
    check(m, {"recall@1": 1, "recall@5": 1, "recall@10": 1})
    check(m, {"f1@1": 1, "f1@5": 2 / 6, "f1@10": 2 / 11})
    for k in KS:
        check(m, {f"map@{k}": 1, f"mrr@{k}": 1, f"ndcg_linear@{k}": 1, f"ndcg_exponential@{k}": 1})


def test_single_relevant_at_rank_3() -> None:
    # ranked = [x0, x1, g, ...], R = {g}.
    # k=1: top = [x0], hits 0 -> everything 0; f1: p + r = 0 + 0 = 0 -> 0 (the zero case).
    # k=5: hits 1: precision 1/5, recall 1, f1 = 2*(1/5)*1/(6/5) = 1/3,
    #      AP = (1/3) / min(1, 5) = 1/3, RR = 1/3, DCG = 1/log2(3+1) = 1/2, IDCG = 1 -> nDCG 0.5.
    # k=10: as k=5 but precision 1/10, f1 = 2*(1/10)/(11/10) = 2/11.
    m = query_metrics(["x0", "x1", "g", *FILLER[2:]], {"g": 1})
    check(m, {"hit@1": 0, "precision@1": 0, "recall@1": 0, "f1@1": 0, "map@1": 0, "mrr@1": 0})
    check(m, {"ndcg_linear@1": 0, "ndcg_exponential@1": 0})
    check(m, {"hit@5": 1, "precision@5": 1 / 5, "recall@5": 1, "f1@5": 1 / 3, "map@5": 1 / 3, "mrr@5": 1 / 3})
    check(m, {"ndcg_linear@5": 0.5, "ndcg_exponential@5": 0.5})
    check(m, {"hit@10": 1, "precision@10": 1 / 10, "recall@10": 1, "f1@10": 2 / 11})
    check(m, {"map@10": 1 / 3, "mrr@10": 1 / 3, "ndcg_linear@10": 0.5, "ndcg_exponential@10": 0.5})


def test_single_relevant_outside_top_10() -> None:
    # g at rank 12: no k in {1, 5, 10} reaches it -> hits 0; recall 0/1 = 0; f1 = 0 (p + r = 0);
    # AP and RR 0 (nothing hit); DCG 0 / IDCG 1 = 0.
    m = query_metrics([*FILLER[:11], "g"], {"g": 1})
    assert all(v == 0.0 for v in m.values()), m


def test_multi_label_three_relevant() -> None:
    # R = {a, b, c}; a at rank 1, b at rank 3, c at rank 10.
    ranked = ["a", "x0", "b", "x1", "x2", "x3", "x4", "x5", "x6", "c", "x7"]
    m = query_metrics(ranked, {"a": 1, "b": 1, "c": 1})
    # k=1: hits 1 -> p 1, r 1/3, f1 = 2*(1*1/3)/(1+1/3) = (2/3)/(4/3) = 1/2;
    #      AP = (1/1)/min(3,1) = 1; RR 1; nDCG = 1/1 = 1.
    check(m, {"hit@1": 1, "precision@1": 1, "recall@1": 1 / 3, "f1@1": 0.5, "map@1": 1, "mrr@1": 1})
    check(m, {"ndcg_linear@1": 1, "ndcg_exponential@1": 1})
    # k=5: hits {a, b} = 2 -> p 2/5, r 2/3, f1 = 2*(2/5)(2/3)/(2/5+2/3) = (8/15)/(16/15) = 1/2;
    #      AP = (1/1 + 2/3) / min(3,5) = (5/3)/3 = 5/9; RR 1;
    #      DCG = 1/log2(2) + 1/log2(4) = 1 + 1/2; IDCG = 1 + 1/log2(3) + 1/log2(4).
    idcg = 1 + 1 / math.log2(3) + 0.5
    check(m, {"hit@5": 1, "precision@5": 2 / 5, "recall@5": 2 / 3, "f1@5": 0.5, "map@5": 5 / 9, "mrr@5": 1})
    check(m, {"ndcg_linear@5": 1.5 / idcg, "ndcg_exponential@5": 1.5 / idcg})
    assert 1.5 / idcg == pytest.approx(0.7039181, abs=1e-6)
    # k=10: hits 3 -> p 3/10, r 1, f1 = 2*(3/10)/(13/10) = 6/13;
    #       AP = (1/1 + 2/3 + 3/10) / min(3,10) = (59/30)/3 = 59/90; RR 1;
    #       DCG = 1 + 1/2 + 1/log2(11); same IDCG (only 3 relevant).
    dcg10 = 1 + 0.5 + 1 / math.log2(11)
    check(m, {"hit@10": 1, "precision@10": 3 / 10, "recall@10": 1, "f1@10": 6 / 13, "map@10": 59 / 90})
    check(m, {"mrr@10": 1, "ndcg_linear@10": dcg10 / idcg, "ndcg_exponential@10": dcg10 / idcg})
    assert dcg10 / idcg == pytest.approx(0.8395701, abs=1e-6)


def test_map_normalises_by_min_of_relevant_and_k() -> None:
    # R = {a, b}, ranked [a, b, ...]: AP@1 = (1/1) / min(2, 1) = 1 (plain AP would give 1/2);
    # AP@5 = (1/1 + 2/2) / min(2, 5) = 1. recall@1 = 1/2.
    m = query_metrics(["a", "b", *FILLER], {"a": 1, "b": 1})
    check(m, {"map@1": 1, "map@5": 1, "map@10": 1, "recall@1": 0.5, "recall@5": 1})
    # R = {a, b}, ranked [x0, a, ...] (b never retrieved): AP@5 = (1/2) / min(2, 5) = 1/4; RR = 1/2.
    m = query_metrics(["x0", "a", *FILLER[1:]], {"a": 1, "b": 1})
    check(m, {"map@5": 0.25, "mrr@5": 0.5, "map@1": 0, "mrr@1": 0})


def test_graded_relevance_linear_and_exponential_differ() -> None:
    # R = {a: 2, b: 1}; ranked [b, a, x0, ...].
    m = query_metrics(["b", "a", *FILLER], {"a": 2, "b": 1})
    # k=1 linear: DCG = 1/1, IDCG = 2/1 -> 1/2. exponential: (2^1-1)/1 over (2^2-1)/1 -> 1/3.
    check(m, {"ndcg_linear@1": 0.5, "ndcg_exponential@1": 1 / 3})
    # k=5 linear: DCG = 1/log2(2) + 2/log2(3) = 1 + 2/log2(3); IDCG = 2 + 1/log2(3).
    lin = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    # k=5 exponential: gains b 2^1-1 = 1, a 2^2-1 = 3: DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3).
    exp = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    check(
        m,
        {"ndcg_linear@5": lin, "ndcg_exponential@5": exp, "ndcg_linear@10": lin, "ndcg_exponential@10": exp},
    )
    assert lin == pytest.approx(0.8597187, abs=1e-6) and exp == pytest.approx(0.7967076, abs=1e-6)
    # The other metrics ignore grades: both relevant, b (rel 1) at rank 1 is a hit.
    # k=1: p 1, r 1/2, f1 = 2*(1/2)/(3/2) = 2/3, AP = 1/min(2,1) = 1. k=5: AP = (1/1 + 2/2)/2 = 1.
    check(
        m, {"hit@1": 1, "precision@1": 1, "recall@1": 0.5, "f1@1": 2 / 3, "map@1": 1, "mrr@1": 1, "map@5": 1}
    )


def test_graded_ideal_uses_sorted_grades_including_unretrieved() -> None:
    # R = {a: 3, b: 1, c: 2}; ranked [b, x0, ...]: IDCG@5 (linear) = 3/1 + 2/log2(3) + 1/log2(4)
    # (grades sorted descending, a and c never retrieved); DCG = 1/1.
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(["b", *FILLER], {"a": 3, "b": 1, "c": 2}, 5) == pytest.approx(1 / idcg, abs=1e-12)
    # k = 2 cuts the ideal list to the best two grades: IDCG@2 = 3 + 2/log2(3).
    idcg2 = 3 + 2 / math.log2(3)
    assert ndcg_at_k(["b", *FILLER], {"a": 3, "b": 1, "c": 2}, 2) == pytest.approx(1 / idcg2, abs=1e-12)


def test_non_positive_grades_are_not_relevant() -> None:
    # {a: 1, z: 0}: z is not relevant (VLM2Vec's qrels loader drops score <= 0), so |R| = 1 and a hit on z
    # counts for nothing: ranked [z, a]: hit@1 = 0, recall@5 = 1/1, RR@5 = 1/2.
    m = query_metrics(["z", "a", *FILLER], {"a": 1, "z": 0})
    check(m, {"hit@1": 0, "recall@5": 1, "mrr@5": 0.5, "ndcg_linear@5": 1 / math.log2(3)})


def test_duplicated_ids_in_ranked() -> None:
    # R = {a}; ranked [a, a, x0, ...]. Set-based metrics count a once:
    #   precision@5 = |{a}| / 5 = 1/5, recall@5 = 1, hit@5 = 1, RR@5 = 1/1 (first occurrence).
    # AP and DCG walk positions, so the second a counts again (VLM2Vec):
    #   AP@5 = (1/1 + 2/2) / min(1, 5) = 2;  DCG@5 = 1/log2(2) + 1/log2(3), IDCG = 1 -> 1 + 1/log2(3).
    #   At k=1 only one position: AP@1 = 1, nDCG@1 = 1.
    m = query_metrics(["a", "a", *FILLER], {"a": 1})
    check(m, {"precision@5": 1 / 5, "recall@5": 1, "hit@5": 1, "mrr@5": 1, "map@1": 1, "ndcg_linear@1": 1})
    check(m, {"map@5": 2.0, "map@10": 2.0})
    check(m, {"ndcg_linear@5": 1 + 1 / math.log2(3), "ndcg_exponential@5": 1 + 1 / math.log2(3)})
    # Duplicate of a non-relevant id before the gold: [x0, x0, a]: RR@5 = 1/3, AP@5 = (1/3)/1.
    m = query_metrics(["x0", "x0", "a"], {"a": 1})
    check(m, {"mrr@5": 1 / 3, "map@5": 1 / 3, "precision@5": 1 / 5})


def test_duplicated_labels_are_deduplicated() -> None:
    # Labels [a, a, b] -> R = {a, b} (|R| = 2, not 3): ranked [a, x0, ...]:
    #   recall@1 = 1/2; AP@5 = (1/1)/min(2, 5) = 1/2; nDCG@5 = 1 / (1 + 1/log2(3)).
    rel = relevance_from_labels(["a", "a", "b"])
    assert rel == {"a": 1.0, "b": 1.0}
    m = query_metrics(["a", *FILLER], rel)
    check(m, {"recall@1": 0.5, "map@5": 0.5, "ndcg_linear@5": 1 / (1 + 1 / math.log2(3))})
    # A single label given as a string.
    assert relevance_from_labels("a") == {"a": 1.0}
    # Graded: a listed twice keeps its higher grade (2); b's grade 0 drops it.
    assert relevance_from_labels(["a", "b", "a"], [1, 0, 2]) == {"a": 2.0}
    with pytest.raises(ValueError):
        relevance_from_labels(["a", "b"], [1])


def test_no_relevant_item_at_all() -> None:
    # R empty (VLM2Vec): hit 0, precision 0, recall 1.0 ("all 0 relevant items were recalled"),
    # f1 = 2*0*1/(0+1) = 0, AP 0, RR 0, nDCG = DCG 0 / IDCG 1 (empty ideal) = 0.
    for relevance in ({}, {"a": 0}):
        m = query_metrics(["a", *FILLER], relevance)
        for k in KS:
            expected = {name: 0.0 for name in METRICS} | {"recall": 1.0}
            check(m, {f"{name}@{k}": v for name, v in expected.items()})


def test_f1_zero_when_precision_and_recall_are_zero() -> None:
    # R = {a}, ranked [x0, ...] without a: p = 0, r = 0 -> p + r = 0 -> f1 = 0 (no division).
    m = query_metrics(FILLER, {"a": 1})
    check(m, {"f1@1": 0, "f1@5": 0, "f1@10": 0})


def test_precision_divides_by_k_even_for_short_rankings() -> None:
    # ranked [a] only, R = {a}: precision@5 = 1/5 and @10 = 1/10 (VLM2Vec divides by k, not len(top)).
    m = query_metrics(["a"], {"a": 1})
    check(m, {"precision@5": 0.2, "precision@10": 0.1, "map@10": 1, "ndcg_linear@10": 1})


def test_custom_ks_and_bad_k() -> None:
    # ks are de-duplicated and sorted; R = {a}, a at rank 2: hit@1 0, hit@2 1, precision@2 = 1/2.
    m = query_metrics(["x0", "a"], {"a": 1}, ks=(2, 1, 2))
    assert list(m)[:2] == ["hit@1", "hit@2"]
    check(m, {"hit@1": 0, "hit@2": 1, "precision@2": 0.5, "mrr@2": 0.5})
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            query_metrics(["a"], {"a": 1}, ks=(bad,))
    with pytest.raises(ValueError):
        average_precision_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 1}, 1, gain="log")  # type: ignore[arg-type]


def test_aggregate_means_and_counts() -> None:
    # Query 1: gold at rank 1 (hit@1 1, mrr@5 1); query 2: gold at rank 3 (hit@1 0, mrr@5 1/3);
    # query 3: gold at rank 12 (all 0). Means: hit@1 = 1/3, hit@5 = 2/3, mrr@5 = (1 + 1/3 + 0)/3 = 4/9,
    # precision@5 = (1/5 + 1/5 + 0)/3 = 2/15, ndcg_linear@5 = (1 + 1/2 + 0)/3 = 1/2.
    rows = [
        query_metrics(["g", *FILLER], {"g": 1}),
        query_metrics(["x0", "x1", "g", *FILLER[2:]], {"g": 1}),
        query_metrics([*FILLER[:11], "g"], {"g": 1}),
    ]
    out = aggregate(rows)
    check(out, {"hit@1": 1 / 3, "hit@5": 2 / 3, "mrr@5": 4 / 9, "precision@5": 2 / 15, "ndcg_linear@5": 0.5})
    assert out["num_pred"] == 3 and out["num_data"] == 3
    assert isinstance(out["num_pred"], int)


def test_aggregate_empty_and_mismatched() -> None:
    out = aggregate([])
    assert list(out) == PUBLISHED_KEYS + ["num_pred", "num_data"]
    assert all(v == 0 for v in out.values())
    with pytest.raises(ValueError):
        aggregate([{"hit@1": 1.0}, {"hit@5": 1.0}])


def single_relevant_identities(m: dict[str, float]) -> None:
    """With exactly one relevant id (grade 1), per query and hence in the mean over queries:
    hit@k == recall@k, precision@k == hit@k / k, f1@k == 2 hit@k / (k + 1), map@k == mrr@k,
    ndcg_linear@k == ndcg_exponential@k (2^1 - 1 = 1)."""
    for k in KS:
        assert m[f"hit@{k}"] == pytest.approx(m[f"recall@{k}"], abs=1e-12)
        assert m[f"precision@{k}"] == pytest.approx(m[f"hit@{k}"] / k, abs=1e-12)
        assert m[f"f1@{k}"] == pytest.approx(2 * m[f"hit@{k}"] / (k + 1), abs=1e-12)
        assert m[f"map@{k}"] == pytest.approx(m[f"mrr@{k}"], abs=1e-12)
        assert m[f"ndcg_linear@{k}"] == pytest.approx(m[f"ndcg_exponential@{k}"], abs=1e-12)
    assert m["hit@1"] == pytest.approx(m["mrr@1"]) == pytest.approx(m["ndcg_linear@1"])


def test_single_relevant_identities_on_random_rankings() -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        ranked = rng.sample(FILLER + ["g"], 21)  # gold anywhere in 21 distinct ids
        m = query_metrics(ranked, {"g": 1})
        single_relevant_identities(m)
        rows.append(m)
    single_relevant_identities(aggregate(rows))


def test_published_imagenet_entry_shows_the_single_relevant_identities() -> None:
    # ImageNet-1K is single-label classification (1000 queries): the published means obey the same
    # identities, e.g. precision@5 0.1912 = 0.956 / 5 and f1@5 0.318667 = 2 * 0.956 / 6.
    needs_shared(PUBLISHED_SCORES)
    entry = json.loads(PUBLISHED_SCORES.read_text())["metrics"]["image"]["ImageNet-1K"]
    assert list(entry) == PUBLISHED_KEYS + ["num_pred", "num_data"]
    assert entry["num_pred"] == entry["num_data"] == 1000
    single_relevant_identities(entry)


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0


# ---- paired bootstrap intervals (eval/stats.py) --------------------------------------------------------
def test_paired_ci_is_exact_for_constant_differences_and_covers_a_known_shift():
    from mmemb.eval.stats import excludes_zero, paired_ci

    rng = np.random.default_rng(1)
    a = {"t1": rng.integers(0, 2, 200).astype(float), "t2": rng.integers(0, 2, 50).astype(float)}
    same = paired_ci(a, a)
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and not excludes_zero(same)
    up = paired_ci(a, {t: np.ones_like(v) for t, v in a.items()})  # every query gains (1 - a) exactly
    assert up["diff"] == pytest.approx(100 - up["a"], abs=0.01) and excludes_zero(up)
    # a real shift of +10 points on noisy 0/1 scores: the interval covers it and excludes 0; the overall is
    # the mean over tasks (t2's 50 queries weigh as much as t1's 200)
    x = {t: (rng.random(400) < 0.4).astype(float) for t in ("a", "b")}
    y = {t: np.where(rng.random(400) < 0.1, 1.0, v) for t, v in x.items()}  # flips ~6% of zeros to ones
    ci = paired_ci(x, y)
    lo, hi = ci["ci95"]
    assert lo < ci["diff"] < hi and lo > 0 and ci["queries"] == 800
    half = paired_ci({"a": x["a"], "b": x["b"][:50]}, {"a": x["a"], "b": y["b"][:50]})
    assert half["diff"] == pytest.approx(100 * (y["b"][:50] - x["b"][:50]).mean() / 2, abs=0.01)
    with pytest.raises(ValueError, match="different tasks"):
        paired_ci({"a": x["a"]}, {"b": x["b"]})
    with pytest.raises(ValueError, match="equal-length"):
        paired_ci({"a": x["a"]}, {"a": x["a"][:3]})
    # per-query records, matched by (task, row) whatever their order
    from mmemb.eval.stats import paired_ci_records

    recs = lambda v: [{"task": t, "row": i, "score": float(s)} for t in v for i, s in enumerate(v[t])]  # noqa: E731
    assert paired_ci_records(recs(x), recs(y)[::-1]) == ci
    assert paired_ci_records(recs(x), recs(y), ["b"])["queries"] == 400
    with pytest.raises(ValueError, match="different tasks"):
        paired_ci_records(recs(x), recs({"a": y["a"]}))
    with pytest.raises(ValueError, match="different queries"):
        paired_ci_records(recs(x), recs(y)[:-1])


def test_group_means_is_the_plain_mean_of_tasks_per_meta_task():
    """MMEB's rule: every dataset counts once, whatever its size; groups in the order of their first task."""
    from mmemb.eval.metrics import group_means, meta_task

    group_of = {
        "a": meta_task("image", "CLS"),
        "b": meta_task("image", "CLS"),
        "c": meta_task("video", "RET"),
    }
    scores = {"c": 10.0, "a": 50.0, "b": 70.0, "stray": 99.0}  # a task without a group is left out
    assert group_means(scores, group_of) == {"video RET": 10.0, "image CLS": 60.0}
    assert list(group_means(scores, group_of)) == ["video RET", "image CLS"]
    assert group_means({}, group_of) == {}
