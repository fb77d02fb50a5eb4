"""Counterfactual utilities of a rationale, as plain functions over L2-normalised embeddings.

Notation (FACTS.md §1): q a query, r one of its candidate rationales, t its positive target, E the embedder,
cos the cosine (a dot product here: every vector is unit length).

    E(q⊕r)   gen embedding of the query with the rationale teacher-forced:  ... <think>r</think>...<gen_emb>
    E(q)     the same query without reasoning (the no-think completion):   ... <no_think><gen_emb>
    E(q⊕r')  the query with r' = a rationale written for *another* query (the swapped control)

Each utility says how much r moves the query towards its own target, measured against a counterfactual:
the same pair with the rationale removed, or replaced. Rows are pairs; shapes are in the signatures.
"""

from __future__ import annotations

import numpy as np


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


UTILITIES = ("pair", "contrastive", "contrastive_swapped", "without", "swapped", "absolute")
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
