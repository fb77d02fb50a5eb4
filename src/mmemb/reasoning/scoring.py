"""Score every candidate rationale of every pair with the counterfactual utilities (scorers.py).

For each pair (q, t) with candidates r_0..r_{K-1} the scorer model embeds, teacher-forced (format.py):

    E(t)      target + no-think completion            E(q)     query + no-think completion
    E(q⊕r_k)  query + think completion of r_k         E(q⊕r')  query + a rationale of another pair
    negatives the pair's own hard negatives from the data, topped up with the other pairs' targets of the
              same task that E(q) finds most similar (mined), `negatives` in all

r' (the swapped control) is the first valid candidate of the next pair, in a seeded order within the task,
whose target differs from this pair's. Every embedding goes through the on-disk cache (keyed by the
model's fingerprint, the item's content and the completion), written in shards: an interrupted run resumes,
and rescoring with other selection settings embeds nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import CachedEncoder, completion_key, content_key
from ..data.pairs import Pair
from ..embedder import Embedder
from ..types import Sample
from . import scorers
from .format import no_think_completion, think_completion


@dataclass
class ScoreSettings:
    negatives: int = 15  # size of the contrastive candidate set besides the positive
    tau: float = 0.02  # contrastive temperature (as in training)
    batch_size: int = 16
    shard_size: int = 256  # items embedded between two cache writes
    seed: int = 0  # order in which swapped-control donors are drawn
    progress: bool = True


@dataclass
class Scores:
    pairs: list[Pair]
    candidates: list[list[dict | None]]  # per pair, per k: the candidate line (None when absent)
    utilities: dict[str, np.ndarray]  # utility name -> (N, K), NaN where a candidate is absent or malformed
    donors: list[str | None] = field(default_factory=list)  # per pair: whose rationale served as r'
    embedded_now: int = 0


class ForcedEmbedder:
    """Teacher-forced gen embeddings of (sample, completion) items through the embedding cache ("forced")."""

    def __init__(self, embedder: Embedder, cache_root: Path, settings: ScoreSettings) -> None:
        self.encoder = CachedEncoder(
            embedder, cache_root, settings.batch_size, settings.shard_size, settings.progress
        )

    @property
    def embedded_now(self) -> int:
        return self.encoder.embedded_now

    def __call__(self, items: list[tuple[Sample, str]]) -> np.ndarray:
        """(n, D) vectors for the items, embedding only those the cache lacks."""
        keys = [completion_key(s, c) for s, c in items]
        samples = {k: s for k, (s, _) in zip(keys, items, strict=True)}
        completions = {k: c for k, (_, c) in zip(keys, items, strict=True)}
        return self.encoder.encode(samples, keys, "gen", completions=completions, tag="forced").get(keys)


def score_pairs(
    embedder: Embedder,
    pairs: list[Pair],
    candidates: dict[str, list[dict]],
    cache_root: Path,
    settings: ScoreSettings | None = None,
) -> Scores:
    s = settings or ScoreSettings()
    tokens = embedder.config.tokens
    no_think = no_think_completion(tokens)
    slots, K = candidate_slots(pairs, candidates)
    forced = ForcedEmbedder(embedder, cache_root, s)

    def think(row: dict) -> str:
        return think_completion(row["think"], row["answer"], tokens)

    # what to embed: targets, bare queries, every valid candidate, the swapped control, data negatives
    T = forced([(p.target, no_think) for p in pairs])  # (N, D)
    Q0 = forced([(p.query, no_think) for p in pairs])  # (N, D)
    valid = [(i, k) for i in range(len(pairs)) for k in range(K) if slots[i][k] and slots[i][k]["valid"]]
    QR = np.full((len(pairs), K, T.shape[1]), np.nan, dtype=np.float32)  # (N, K, D)
    if valid:
        vecs = forced([(pairs[i].query, think(slots[i][k])) for i, k in valid])
        for (i, k), v in zip(valid, vecs, strict=True):
            QR[i, k] = v
    donors = pick_donors(pairs, slots, s.seed)
    QS = np.full_like(T, np.nan)  # (N, D)
    with_donor = [i for i, d in enumerate(donors) if d is not None]
    if with_donor:
        index = {p.id: j for j, p in enumerate(pairs)}
        items = [(pairs[i].query, think(first_valid(slots[index[donors[i]]]))) for i in with_donor]
        QS[with_donor] = forced(items)
    negs, mask = mine_negatives(
        pairs, T, Q0, lambda samples: forced([(x, no_think) for x in samples]), s.negatives
    )  # (N, M, D), (N, M)

    N = len(pairs)
    util = {name: np.full((N, K), np.nan) for name in scorers.UTILITIES}
    for k in range(K):
        q_r = QR[:, k]  # (N, D), NaN rows where absent
        util["absolute"][:, k] = scorers.absolute(q_r, T)
        util["without"][:, k] = scorers.with_vs_without(q_r, Q0, T)
        util["swapped"][:, k] = scorers.swapped_control(q_r, QS, T)
        util["contrastive"][:, k] = scorers.contrastive_gain(q_r, Q0, T, negs, mask, s.tau)
        util["contrastive_swapped"][:, k] = scorers.contrastive_gain(q_r, QS, T, negs, mask, s.tau)
    # pair: must beat both counterfactuals; where no donor exists, the with/without test alone
    c, cs = util["contrastive"], util["contrastive_swapped"]
    util["pair"] = np.where(np.isnan(cs), c, np.minimum(c, cs))
    return Scores(pairs, slots, util, donors, forced.embedded_now)


def candidate_slots(
    pairs: list[Pair], candidates: dict[str, list[dict]]
) -> tuple[list[list[dict | None]], int]:
    """Per pair, its candidate lines by k (None where absent), and K = the largest k + 1."""
    K = max((row["k"] + 1 for rows in candidates.values() for row in rows), default=0)
    slots: list[list[dict | None]] = [[None] * K for _ in pairs]
    for i, p in enumerate(pairs):
        for row in candidates.get(p.id, []):
            slots[i][row["k"]] = row
    return slots, K


def first_valid(rows: list[dict | None]) -> dict | None:
    return next((r for r in rows if r and r["valid"]), None)


def pick_donors(pairs: list[Pair], slots: list[list[dict | None]], seed: int) -> list[str | None]:
    """Per pair, the id of the pair whose first valid rationale is its swapped control r' (see module)."""
    tkey = [content_key(p.target) for p in pairs]
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if first_valid(slots[i]):
            by_task.setdefault(p.task, []).append(i)
    donors: list[str | None] = [None] * len(pairs)
    for members in by_task.values():
        order = sorted(members, key=lambda i: hashlib.sha256(f"{seed}|{pairs[i].id}".encode()).digest())
        for pos, i in enumerate(order):
            for step in range(1, len(order)):
                j = order[(pos + step) % len(order)]
                if tkey[j] != tkey[i]:
                    donors[i] = pairs[j].id
                    break
    return donors


def mine_negatives(
    pairs: list[Pair], T: np.ndarray, Q0: np.ndarray, embed: Callable[[list[Sample]], np.ndarray], m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair up to m negatives (N, m, D) and their mask (N, m): the pair's own from the data first
    (embedded by `embed`, as targets are), then the other targets T of its task that its bare query Q0 finds
    most similar (mined), never one equal to its own target."""
    N, D = T.shape
    negs = np.zeros((N, m, D), dtype=np.float32)
    mask = np.zeros((N, m), dtype=bool)
    if m == 0:
        return negs, mask
    own = [list(p.negatives[:m]) for p in pairs]
    flat = [s for row in own for s in row]
    vecs = embed(flat) if flat else np.zeros((0, D), np.float32)
    tkey = [content_key(p.target) for p in pairs]
    pos = 0
    for i, row in enumerate(own):
        negs[i, : len(row)] = vecs[pos : pos + len(row)]
        mask[i, : len(row)] = True
        pos += len(row)
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_task.setdefault(p.task, []).append(i)
    for members in by_task.values():
        idx = np.array(members)
        sims = Q0[idx] @ T[idx].T  # (n, n): each bare query against every target of its task
        for a, i in enumerate(members):
            need = m - len(own[i])
            if need <= 0:
                continue
            own_keys = {content_key(s) for s in own[i]} | {tkey[i]}
            picked, seen = [], set()
            for b in np.argsort(-sims[a], kind="stable"):
                j = members[b]
                if tkey[j] in own_keys or tkey[j] in seen:
                    continue
                seen.add(tkey[j])
                picked.append(j)
                if len(picked) == need:
                    break
            start = len(own[i])
            negs[i, start : start + len(picked)] = T[picked]
            mask[i, start : start + len(picked)] = True
    return negs, mask
