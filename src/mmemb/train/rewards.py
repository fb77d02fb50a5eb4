"""Rewards for the adaptive-reasoning policy (issue 6), as plain functions.

A rollout is one sampled completion of a query: either `<no_think><gen_emb>` (no reasoning) or
`<think>…</think><answer>…</answer><gen_emb>`. Its reward (UME-R1's ranking reward, FACTS.md §2, plus
MMEmb-R1's price of reasoning):

    reward = format + rank_term · gap − λ · cost

    format     1 if the completion is well-formed (either form), else 0
    rank_term  share of the query's own targets among its |own| most similar targets of the whole batch
    gap        mean cosine to its own targets − mean cosine to the other pairs' targets
    cost       1 per invocation of reasoning (`per="call"`), or per reasoning token (`per="token"`)
"""

from __future__ import annotations

import re

import numpy as np

from ..config import TokensConfig


def format_reward(text: str, tokens: TokensConfig | None = None) -> float:
    """1.0 for `<no_think><gen_emb>` or `<think>T</think><answer>A</answer><gen_emb>` (T, A non-empty).

    >>> format_reward("<think>a cat</think><answer>cat</answer><gen_emb>")
    1.0
    >>> format_reward("<think>a cat</think><gen_emb>")
    0.0
    """
    t = tokens or TokensConfig()
    e = re.escape
    no_think = rf"^\s*{e(t.no_think)}\s*{e(t.gen_emb)}\s*$"
    think = rf"^\s*{e(t.think_open)}(.+?){e(t.think_close)}\s*{e(t.answer_open)}(.+?){e(t.answer_close)}\s*{e(t.gen_emb)}\s*$"
    if re.match(no_think, text or ""):
        return 1.0
    m = re.match(think, text or "", re.DOTALL)
    return 1.0 if m and m.group(1).strip() and m.group(2).strip() else 0.0


def ranking_reward(
    queries: np.ndarray, owner: np.ndarray, targets: np.ndarray, target_owner: np.ndarray
) -> np.ndarray:
    """rank_term · gap for every query rollout (UME-R1's retrieval reward).

    queries: (R, D) unit vectors, one per rollout; owner: (R,) the pair each rollout belongs to.
    targets: (M, D) unit vectors; target_owner: (M,) the pair of each target (a pair may have several
    target embeddings, e.g. G target rollouts; fixed disc targets give one each).

    For rollout r of pair p, with S = its cosines to all M targets and n = |own targets of p|:
        rank_term = |top-n of S ∩ own targets| / n
        gap       = mean(S[own]) − mean(S[others])

    Example: targets t0 = (1, 0) of pair 0 and t1 = (0, 1) of pair 1; a rollout of pair 0 at (0.8, 0.6):
        S = [0.8, 0.6], top-1 is t0 (its own) -> rank_term 1, gap 0.8 − 0.6 = 0.2 -> reward 0.2.
        A rollout of pair 0 at (0.6, 0.8): top-1 is t1 -> rank_term 0 -> reward 0 (gap −0.2 unused).
    """
    sims = queries @ targets.T  # (R, M)
    out = np.zeros(len(queries))
    for r in range(len(queries)):
        own = target_owner == owner[r]  # (M,)
        n = int(own.sum())
        if n == 0 or n == len(targets):
            continue  # nothing to rank against
        top = np.argsort(-sims[r], kind="stable")[:n]
        rank_term = own[top].sum() / n
        gap = sims[r][own].mean() - sims[r][~own].mean()
        out[r] = rank_term * gap
    return out


def reasoning_cost(invoked: np.ndarray, think_tokens: np.ndarray, per: str = "call") -> np.ndarray:
    """Cost of each rollout: 1 per invocation (`call`) or its number of reasoning tokens (`token`).

    >>> reasoning_cost(np.array([True, False]), np.array([30, 0]), "token").tolist()
    [30.0, 0.0]
    """
    if per == "call":
        return invoked.astype(float)
    if per == "token":
        return np.where(invoked, think_tokens, 0).astype(float)
    raise ValueError(f"per must be 'call' or 'token', got {per!r}")


def total_reward(fmt: np.ndarray, ranking: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """format + rank_term · gap − λ · cost, per rollout."""
    return fmt + ranking - lam * cost
