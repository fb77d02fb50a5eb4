"""Evaluate an embedder on tasks: embed each unique item once (through the cache), rank, score.

    for each task:
        queries    -> vectors in qry_mode   (cache: fingerprint / qry_mode)
        candidates -> vectors in tgt_mode   (cache: fingerprint / tgt_mode)
        local:  each query ranks its own candidate list;  global: each query ranks the whole corpus
        metrics per query (metrics.query_metrics) -> mean per task (metrics.aggregate)

Per query it records the main score, the gold's rank, the (amortised) latency of embedding the query,
the generated tokens and whether reasoning ran. A broken task is reported and skipped; the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import CachedEncoder, Generation
from ..data.tasks import Task
from ..distributed import ONE, Ranks
from ..embedder import Embedder, truncate
from ..types import MODES, InputError, mode_space
from .metrics import aggregate, query_metrics

TOP = 10  # metrics are taken at k <= 10


@dataclass
class EvalSettings:
    qry_mode: str = "disc"
    tgt_mode: str = "disc"
    batch_size: int = 16
    shard_size: int = 256  # items embedded between two cache writes (what an interruption can lose)
    max_new_tokens: int | None = None  # gen overrides (None: the model's own settings)
    temperature: float | None = None
    sample: int = 0  # pass@k: index of this sample (seeds the sampling)
    allow_any_mode_pair: bool = False
    progress: bool = True
    dimensions: int | None = None  # Matryoshka width to score at (None: full); the cache keeps full vectors

    @property
    def gen(self) -> Generation:
        return Generation(self.max_new_tokens, self.temperature, self.sample)


@dataclass
class TaskResult:
    name: str
    metrics: dict[str, float]
    per_query: list[dict] = field(default_factory=list)
    unique_items: int = 0
    total_items: int = 0
    embedded_now: int = 0  # items not found in the cache
    seconds: float = 0.0


def check_modes(embedder: Embedder, s: EvalSettings) -> None:
    for m in (s.qry_mode, s.tgt_mode):
        if m not in MODES:
            raise InputError(f"unknown mode {m!r}; choose from {list(MODES)}")
        embedder.profile.check_mode(m)
    valid = [tuple(p) for p in embedder.config.valid_mode_pairs]
    spaces = (mode_space(s.qry_mode), mode_space(s.tgt_mode))
    if spaces not in valid and not s.allow_any_mode_pair:
        raise InputError(
            f"query mode {s.qry_mode!r} ({spaces[0]} space) against target mode {s.tgt_mode!r} ({spaces[1]} "
            f"space) is not a valid pair for this model (valid space pairs: {valid}, from its "
            "embedder_config.json); pass --allow-any-mode-pair to run it anyway"
        )


def rank_task(task: Task, q: dict[str, np.ndarray], c: dict[str, np.ndarray]) -> list[tuple[list[str], int]]:
    """Per query row: the top-10 candidate keys (best first) and the rank (1-based) of its best relevant."""
    out = []
    if task.local is None:
        keys = task.corpus
        cmat = np.stack([c[k] for k in keys])  # (C, D)
        col = {k: j for j, k in enumerate(keys)}
    for row, qk in enumerate(task.queries):
        if task.local is not None:
            keys = task.local[row]
            cmat = np.stack([c[k] for k in keys])  # (L, D)
            col = {k: j for j, k in enumerate(keys)}
        scores = cmat @ q[qk]  # (C,) cosine: vectors are unit length
        top = np.argsort(-scores, kind="stable")[:TOP]
        rel = [scores[col[k]] for k in task.relevance[row] if k in col]
        gold_rank = int((scores > max(rel)).sum()) + 1 if rel else -1  # -1: no relevant candidate ranked
        out.append(([keys[j] for j in top], gold_rank))
    return out


def evaluate_task(
    task: Task,
    embedder: Embedder,
    s: EvalSettings,
    cache_root: Path,
    fingerprint: str,
    ranks: Ranks = ONE,
) -> TaskResult:
    t0 = time.perf_counter()
    enc = CachedEncoder(embedder, cache_root, s.batch_size, s.shard_size, s.progress, fingerprint, ranks)
    cand = task.candidate_keys()
    qcache = enc.encode(task.items, task.queries, s.qry_mode, s.gen)
    tcache = enc.encode(task.items, cand, s.tgt_mode, s.gen)
    n_now = enc.embedded_now
    q = {k: qcache.vectors[k] for k in task.queries}
    c = {k: tcache.vectors[k] for k in cand}
    d = embedder.check_dimensions(s.dimensions) if s.dimensions else None
    if d is not None:  # Matryoshka: the prefix of the cached full-width vectors, renormalised
        q = dict(zip(q, truncate(np.stack(list(q.values())), d), strict=True))
        c = dict(zip(c, truncate(np.stack(list(c.values())), d), strict=True))
    per_query, rows = [], []
    metric = task.info.metric
    for row, (ranked, gold_rank) in enumerate(rank_task(task, q, c)):
        m = query_metrics(ranked, task.relevance[row])
        rows.append(m)
        info = qcache.info[task.queries[row]]
        per_query.append(
            {
                "task": task.name,
                "row": row,
                "query": task.queries[row],
                "score": m[metric],
                "gold_rank": gold_rank,
                "qry_mode": s.qry_mode,
                "tgt_mode": s.tgt_mode,
                "reasoned": info.get("reasoned", s.qry_mode == "gen"),  # older caches: gen always reasoned
                "gen_tokens": info.get("gen_tokens", 0),
                "latency_s": info.get("seconds", 0.0),
            }
            | ({"action": info["action"]} if "action" in info else {})
        )
    n_refs = sum(len(x) for x in task.local) if task.local is not None else len(task.corpus)
    return TaskResult(
        task.name,
        aggregate(rows),
        per_query,
        unique_items=len(set(task.queries) | set(cand)),
        total_items=len(task.queries) + n_refs,
        embedded_now=n_now,
        seconds=time.perf_counter() - t0,
    )
