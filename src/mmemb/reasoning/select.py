"""Selection rules: from each pair's candidate utilities to a chosen rationale and a think/no-think label.

    utilities: (N, K) float, NaN where candidate k is missing or malformed (never selectable)

    hard   chosen = argmax_k u;  weight 1 on it
    soft   weights = softmax(u / temperature) over the valid candidates (training may sample by them);
           chosen = argmax_k u
    all    every valid candidate, equal weights (the "no selection" ablation); label think if any is valid

For hard and soft, the label is *think* when the best utility exceeds `delta`, else *no-think* (chosen = -1,
weights 0): reasoning that does not beat its counterfactual by delta is not worth its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("hard", "soft", "all")


@dataclass
class Selection:
    chosen: np.ndarray  # (N,) int, -1 = no rationale (no-think)
    think: np.ndarray  # (N,) bool
    weights: np.ndarray  # (N, K) float, rows sum to 1 where think, 0 elsewhere


def select(
    utilities: np.ndarray, rule: str = "hard", delta: float = 0.0, temperature: float = 0.05
) -> Selection:
    """Apply a rule to (N, K) utilities (see the module docstring).

    Example: u = [[0.3, nan, 0.1], [-0.2, -0.1, nan]], rule hard, delta 0
      -> chosen [0, -1], think [True, False], weights [[1, 0, 0], [0, 0, 0]]
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {list(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    u = np.asarray(utilities, dtype=np.float64)
    valid = ~np.isnan(u)  # (N, K)
    any_valid = valid.any(axis=1)  # (N,)
    filled = np.where(valid, u, -np.inf)
    best = np.where(any_valid, filled.max(axis=1, initial=-np.inf), -np.inf)  # (N,)
    chosen = np.where(any_valid, filled.argmax(axis=1), -1)
    if rule == "all":
        think = any_valid
        weights = valid / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        return Selection(np.where(think, chosen, -1), think, weights * think[:, None])
    think = any_valid & (best > delta)
    if rule == "hard":
        weights = np.zeros_like(u)
        rows = np.nonzero(think)[0]
        weights[rows, chosen[rows]] = 1.0
    else:
        shift = np.where(any_valid, best, 0.0)[:, None]  # (N, 1): the max, for a stable softmax
        z = np.where(valid, (np.where(valid, u, 0.0) - shift) / temperature, 0.0)
        e = np.where(valid, np.exp(z), 0.0)
        weights = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
        weights = weights * think[:, None]
    return Selection(np.where(think, chosen, -1), think, weights)
