"""GRPO pieces for the adaptive-reasoning policy, on per-token log-probabilities (UME-R1's settings, FACTS §2).

advantage  A_i = (r_i − mean_G r) / (std_G r + 1e-4)           within each group of G rollouts of a query
ratio      ρ_t = exp(logp_t − logp_old_t)
clipped    ℓ_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)     (ε_high 0.28 > ε_low 0.2: "clip-higher")
KL (k3)    k_t = exp(ref_t − logp_t) − (ref_t − logp_t) − 1        (≥ 0, unbiased for KL(π‖π_ref))
loss       Σ_t mask_t (ℓ_t + β k_t) / (rollouts · max_len)          (a constant divisor, as UME-R1)
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group: int, eps: float = 1e-4) -> Tensor:
    """(N·G,) rewards, consecutive groups of `group` rollouts -> (N·G,) normalised advantages.

    Example: rewards [1, 0, 0, 0] in one group: mean 0.25, std (unbiased) 0.5 ->
    [1.4997, −0.4999, −0.4999, −0.4999]. A group whose rollouts all score alike gets 0 everywhere.
    """
    if rewards.numel() % group:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group}")
    r = rewards.view(-1, group)  # (N, G)
    std = r.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(r[:, :1])
    return ((r - r.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(π‖π_ref): exp(d) − d − 1 with d = ref − logp. Same shape as inputs."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    max_len: int,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    beta: float = 0.04,
) -> dict[str, Tensor]:
    """Clipped policy-gradient loss with a KL penalty to a frozen reference.

    logp, old_logp, ref_logp, mask: (R, T) per completion token (mask 1 on real tokens); advantages: (R,).
    Returns {"policy_loss", "kl", "clip_fraction"} (named outputs; only policy_loss has a gradient).
    """
    ratio = torch.exp(logp - old_logp)  # (R, T)
    a = advantages[:, None]  # (R, 1)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * a, clipped * a)  # (R, T)
    kl = kl_k3(logp, ref_logp)
    denom = logp.shape[0] * max_len
    loss = ((per_token + beta * kl) * mask).sum() / denom
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        clip_fraction = (((ratio < 1 - eps_low) | (ratio > 1 + eps_high)).float() * mask).sum() / n
        mean_kl = (kl * mask).sum() / n
    return {"policy_loss": loss, "kl": mean_kl, "clip_fraction": clip_fraction}
