"""What each action of the adaptive policy gives each training query, with the embedder frozen.

For pair i (query q, target t) and action a of `policy.budgets` (0: no reasoning; a > 0: think with at most
budgets[a] generated tokens):

    features[i]   the disc embedding of q (the policy head's input)
    vector[a, i]  q embedded in mode nothink (a = 0) or think with max_new_tokens = budgets[a]
    format[a, i]  1 if the completion is well-formed (rewards.format_reward), else 0
    ranking[a, i] rank_term · gap of vector[a, i] against t and the pair's negatives (rewards.ranking_reward)
    tokens[a, i]  tokens generated;  seconds[a, i]  measured latency (amortised over its batch)

Targets and negatives are embedded in nothink mode (they are indexed without reasoning). Negatives are the
pair's own from the data, topped up with mined same-task targets (as `mmemb reason select`). Every vector
goes through the evaluation's on-disk cache under the same tags, so an interrupted run resumes and a later
`mmemb eval` of the same model reuses them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import CachedEncoder, Generation
from ..data.pairs import Pair
from ..embedder import Embedder
from ..reasoning.scoring import mine_negatives
from .rewards import format_reward, ranking_reward


@dataclass
class Outcomes:
    ids: list[str]
    tasks: list[str]
    features: np.ndarray  # (N, D)
    format: np.ndarray  # (A, N)
    ranking: np.ndarray  # (A, N)
    tokens: np.ndarray  # (A, N)
    seconds: np.ndarray  # (A, N)

    def reward(self, lam: float, cost: str, format_weight: float = 1.0) -> np.ndarray:
        """(A, N): w·format + rank_term · gap − λ · cost (rewards.total_reward), per action and query."""
        from .rewards import reasoning_cost, total_reward

        invoked = np.zeros_like(self.tokens, dtype=bool)
        invoked[1:] = True
        cost_ = reasoning_cost(invoked, self.tokens, cost)
        return total_reward(format_weight * self.format, self.ranking, cost_, lam)


def compute_outcomes(
    embedder: Embedder,
    pairs: list[Pair],
    budgets: list[int],
    cache_root: Path,
    negatives: int = 15,
    batch_size: int = 16,
    progress: bool = True,
) -> Outcomes:
    enc = CachedEncoder(embedder, cache_root, batch_size, progress=progress)
    queries = [p.query for p in pairs]
    say = (lambda m: print(f"mmemb train policy: {m}", file=sys.stderr)) if progress else (lambda m: None)
    say(f"outcomes of {len(budgets)} actions for {len(pairs)} queries (cached under {cache_root})")
    features, _ = enc.samples(queries, "disc")
    T, _ = enc.samples([p.target for p in pairs], "nothink")  # (N, D)
    vectors, infos = [], []
    for a, cap in enumerate(budgets):
        v, info = (
            enc.samples(queries, "nothink") if a == 0 else enc.samples(queries, "think", Generation(cap))
        )
        vectors.append(v)
        infos.append(info)
    negs, mask = mine_negatives(
        pairs, T, vectors[0], lambda samples: enc.samples(samples, "nothink")[0], negatives
    )  # (N, M, D), (N, M)
    A, N = len(budgets), len(pairs)
    fmt, ranking = np.zeros((A, N)), np.zeros((A, N))
    tokens, seconds = np.zeros((A, N)), np.zeros((A, N))
    for i in range(N):
        cands = np.concatenate([T[i : i + 1], negs[i][mask[i]]])  # (1 + m, D): the target first
        owner = np.array([0] + [1] * int(mask[i].sum()))
        for a in range(A):
            info = infos[a][i]
            text = info.get("text", embedder.no_think) if a else embedder.no_think
            fmt[a, i] = format_reward(text, embedder.config.tokens)
            ranking[a, i] = ranking_reward(vectors[a][i : i + 1], np.array([0]), cands, owner)[0]
            tokens[a, i], seconds[a, i] = info.get("gen_tokens", 0), info.get("seconds", 0.0)
    if enc.embedded_now:
        say(f"embedded {enc.embedded_now} items")
    return Outcomes([p.id for p in pairs], [p.task for p in pairs], features, fmt, ranking, tokens, seconds)
