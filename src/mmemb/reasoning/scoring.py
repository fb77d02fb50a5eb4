"""Score every candidate rationale of every pair with the counterfactual utilities.

For each pair (q, t) with candidates r_0..r_{K-1} the scorer model embeds, teacher-forced (format.py):

    E(t)      target + no-think completion            E(q)     query + no-think completion
    E(q⊕r_k)  query + think completion of r_k         E(q⊕r')  query + a rationale of another pair
    negatives the pair's own hard negatives from the data, topped up with the other pairs' targets of the
              same task that E(q) finds most similar (mined), `negatives` in all

r' (the swapped control) is the first valid candidate of the next pair, in a seeded order within the task,
whose target differs from this pair's. Every embedding goes through the on-disk cache (keyed by the
model's fingerprint, the item's content and the completion), written in shards: an interrupted run resumes,
and rescoring with other selection settings embeds nothing.

The counterfactual utilities of a rationale are plain functions over L2-normalised embeddings, below.

Notation (FACTS.md §1): q a query, r one of its candidate rationales, t its positive target, E the embedder,
cos the cosine (a dot product here: every vector is unit length).

    E(q⊕r)   gen embedding of the query with the rationale teacher-forced:  ... <think>r</think>...<gen_emb>
    E(q)     the same query without reasoning (the no-think completion):   ... <no_think><gen_emb>
    E(q⊕r')  the query with r' = a rationale written for *another* query (the swapped control)

Each utility says how much r moves the query towards its own target, measured against a counterfactual:
the same pair with the rationale removed, or replaced. Rows are pairs; shapes are in the signatures.
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
from .config import UTILITIES
from .format import no_think_completion, think_completion


# ---- the utilities, as plain functions over L2-normalised embeddings -------------------------------------
def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)  # (N,): unit vectors, so cos = dot


def absolute(q_r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """u = cos(E(q⊕r), E(t)) — no counterfactual at all (the 'no control' ablation).

    q_r, t: (N, D) -> (N,). Example: q_r = [1, 0], t = [0.6, 0.8]  ->  u = 0.6.
    """
    return _cos(q_r, t)


def with_vs_without(q_r: np.ndarray, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """u = cos(E(q⊕r), E(t)) − cos(E(q), E(t)): how much closer to its target the query gets with r.

    q_r, q, t: (N, D) -> (N,).
    Example: q_r = [0.6, 0.8], q = [1, 0], t = [0, 1]  ->  u = 0.8 − 0 = 0.8.
    """
    return _cos(q_r, t) - _cos(q, t)


def swapped_control(q_r: np.ndarray, q_swap: np.ndarray, t: np.ndarray) -> np.ndarray:
    """u = cos(E(q⊕r), E(t)) − cos(E(q⊕r'), E(t)), r' a rationale written for another query.

    Positive only when r helps *because of what it says about q*: a rationale whose gain comes from the
    mere format of reasoning (any <think> text moves every query the same way) scores about 0 here.
    q_r, q_swap, t: (N, D) -> (N,).
    Example: q_r = [0.6, 0.8], q_swap = [0.8, 0.6], t = [0, 1]  ->  u = 0.8 − 0.6 = 0.2.
    """
    return _cos(q_r, t) - _cos(q_swap, t)


def contrastive_gain(
    q_r: np.ndarray,
    q: np.ndarray,
    t: np.ndarray,
    negs: np.ndarray,
    mask: np.ndarray | None = None,
    tau: float = 0.02,
) -> np.ndarray:
    """u = log p(t | q⊕r) − log p(t | q), with p(t | x) = softmax over C = {t} ∪ negatives of cos(x, c)/τ.

    Pair-aware: r must raise the target *relative to the mined negatives*, not just the raw cosine (a
    rationale that pulls every candidate closer gains nothing). τ = 0.02 as in training (FACTS §2).
    q_r, q, t: (N, D); negs: (N, M, D); mask: (N, M) True where a negative exists (rows may have fewer).
    Returns (N,) in nats.

    Example (τ = 1, one negative): t = [0, 1], n = [1, 0], q = [1, 0], q_r = [0, 1]
      with r:    log softmax([1, 0])[0] = 1 − log(e + 1) = −0.3133
      without r: log softmax([0, 1])[0] = 0 − log(1 + e) = −1.3133      ->  u = 1.0
    """
    mask = np.ones(negs.shape[:2], dtype=bool) if mask is None else mask

    def log_p(x: np.ndarray) -> np.ndarray:
        pos = _cos(x, t)[:, None] / tau  # (N, 1)
        neg = np.einsum("nd,nmd->nm", x, negs) / tau  # (N, M)
        neg = np.where(mask, neg, -np.inf)
        logits = np.concatenate([pos, neg], axis=1)  # (N, 1 + M)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # (N,)
        return pos[:, 0] - lse

    return log_p(q_r) - log_p(q)


"""How `scoring.score_pairs` names them:

    without, swapped, absolute   the cosine utilities above
    contrastive                  contrastive_gain(q_r, E(q), ...)      against the query without reasoning
    contrastive_swapped          contrastive_gain(q_r, E(q⊕r'), ...)   against someone else's rationale
    pair (the default)           min(contrastive, contrastive_swapped): a rationale must beat *both*
                                 counterfactuals, pair-aware (relative to the negatives)

Why the default is contrastive: appending any rationale moves the gen embedding (the text before
<gen_emb> changes), and a raw cosine counts that move as help or harm. Measured with untrained nano on
mmeb-mini (docs/reasoning.md) the cosine `without` was negative for 94% of rationales, whatever they
said; the contrastive gain cancels a move that shifts the target and its negatives alike."""


# ---- scoring: what the utilities need, embedded ----------------------------------------------------------


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
    util = {name: np.full((N, K), np.nan) for name in UTILITIES}
    for k in range(K):
        q_r = QR[:, k]  # (N, D), NaN rows where absent
        util["absolute"][:, k] = absolute(q_r, T)
        util["without"][:, k] = with_vs_without(q_r, Q0, T)
        util["swapped"][:, k] = swapped_control(q_r, QS, T)
        util["contrastive"][:, k] = contrastive_gain(q_r, Q0, T, negs, mask, s.tau)
        util["contrastive_swapped"][:, k] = contrastive_gain(q_r, QS, T, negs, mask, s.tau)
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
