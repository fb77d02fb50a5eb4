"""InfoNCE over embeddings: in-batch negatives, optional hard negatives, symmetric, gathered across ranks.

This is the contrastive loss of UME-R1 and VLM2Vec (FACTS.md §2-3): cosine scores of L2-normalised
embeddings divided by a temperature τ (0.02, i.e. "scale 50"), cross-entropy against the matching row, the
candidates taken from the whole global batch (all ranks), and in UME-R1 both directions averaged.

Notation: W ranks, B pairs per rank, rank r, local row i, its global index g = r·B + i. Gathered targets
t_1..t_N (N = W·B), gathered hard negatives h_1..h_M (M = W·B·H, every query's hard negatives are candidates
for every query, as in VLM2Vec), gathered queries q_1..q_N:

    ℓ_q(i) = -log  exp(q_i·t_g / τ) / (Σ_{n≤N} exp(q_i·t_n / τ) + Σ_{m≤M} exp(q_i·h_m / τ))
    ℓ_t(i) = -log  exp(t_i·q_g / τ) /  Σ_{n≤N} exp(t_i·q_n / τ)
    loss   = mean_i ℓ_q(i)                               (symmetric=False)
    loss   = ½ (mean_i ℓ_q(i) + mean_i ℓ_t(i))            (symmetric=True)

Each rank's loss averages its own B rows; with ``gather_with_grad`` the backward sums every rank's
contribution into the local shard, so after DDP averages parameter gradients over the W ranks they equal
the gradient of the single-process loss of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_with_grad", "info_nce"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (B, ...) from every rank into (W·B, ...), rank-major, keeping the local gradient.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward sums the incoming gradients of
    every rank into each rank's own shard (a reduce-scatter). Every rank must call this with the same
    shape. Returns ``x`` itself when torch.distributed is not initialised or the world has one rank.
    """
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)  # (W·B, ...)


def info_nce(
    q: Tensor,
    t: Tensor,
    hard: Tensor | None = None,
    temperature: float = 0.02,
    symmetric: bool = True,
    gather: bool = True,
    target_ids: Tensor | None = None,
) -> dict[str, Tensor]:
    """Contrastive loss of queries ``q`` against targets ``t`` (row i of each is a positive pair).

    Args:
        q: (B, D) L2-normalised query embeddings (this function does not normalise).
        t: (B, D) L2-normalised target embeddings, ``t[i]`` the positive of ``q[i]``.
        hard: optional (B, H, D) hard negatives (H may be 0). They become extra candidate columns shared by
            every query of the global batch. H must be the same on every rank.
        temperature: τ; logits are dot products / τ.
        symmetric: also add the target→query direction (over queries only) and average the two.
        gather: take candidates from all ranks (``gather_with_grad``); no effect without torch.distributed.
        target_ids: optional (B,) integer ids of the targets' content. In-batch columns whose target has the
            positive's id (another row with the same target, e.g. two images of one class) are not negatives:
            they are masked out of the query→target softmax, and the matching query rows out of the
            target→query softmax. Without it, such duplicates are false negatives.

    Returns:
        ``{"loss": scalar, "accuracy": scalar}``; accuracy is the share of local queries whose top-1
        candidate (query→target direction, hard negatives included) is their positive, without gradient.

    The formula is in the module docstring. Worked example, τ = 1, no gathering:
    q = [(1, 0), (0, 1)], t = [(0.8, 0.6), (0, 1)], so q·tᵀ = [[0.8, 0], [0.6, 1]].

        query→target: ℓ_q = [log(1 + e^-0.8), log(1 + e^-0.4)] = [0.37110, 0.51302], mean 0.44206
        target→query: ℓ_t = [log(1 + e^-0.2), log(1 + e^-1.0)] = [0.59814, 0.31326], mean 0.45570
        symmetric loss = (0.44206 + 0.45570) / 2 = 0.44888; accuracy = 1 (both diagonals win)

    Adding hard negatives h = [[(0.96, 0.28)], [(0.28, 0.96)]] gives query 1 the logits
    [0.8, 0, 0.96, 0.28]: its hard negative outscores its positive, so accuracy becomes 0.5.
    """
    if q.dim() != 2 or q.shape != t.shape:
        raise ValueError(f"info_nce: q and t must both be (B, D); got {tuple(q.shape)} and {tuple(t.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    b, d = q.shape
    if hard is not None and (hard.dim() != 3 or hard.shape[0] != b or hard.shape[2] != d):
        raise ValueError(f"info_nce: hard must be (B={b}, H, D={d}); got {tuple(hard.shape)}")

    use_gather = gather and _distributed()
    rank = dist.get_rank() if use_gather else 0
    all_t = gather_with_grad(t) if use_gather else t  # (N, D), N = W·B
    cands = all_t
    if hard is not None and hard.shape[1] > 0:
        flat_hard = hard.reshape(-1, d)  # (B·H, D)
        all_hard = gather_with_grad(flat_hard) if use_gather else flat_hard  # (M, D), M = W·B·H
        cands = torch.cat([all_t, all_hard], dim=0)  # (N + M, D)
    labels = rank * b + torch.arange(b, device=q.device)  # (B,) global index of each local positive

    logits_qt = q @ cands.T / temperature  # (B, N + M)
    dup = None
    if target_ids is not None:
        all_ids = gather_with_grad(target_ids[:, None].float())[:, 0] if use_gather else target_ids  # (N,)
        dup = target_ids[:, None].to(all_ids.dtype) == all_ids[None, :]  # (B, N): same target content
        dup[torch.arange(b, device=q.device), labels] = False  # the positive itself stays
        logits_qt = torch.cat([logits_qt[:, : dup.shape[1]].masked_fill(dup, float("-inf")),
                               logits_qt[:, dup.shape[1] :]], dim=1)  # fmt: skip
    loss = F.cross_entropy(logits_qt, labels)
    if symmetric:
        all_q = gather_with_grad(q) if use_gather else q  # (N, D)
        logits_tq = t @ all_q.T / temperature  # (B, N)
        if dup is not None:
            logits_tq = logits_tq.masked_fill(dup, float("-inf"))  # queries of the same target
        loss = 0.5 * (loss + F.cross_entropy(logits_tq, labels))

    with torch.no_grad():
        accuracy = (logits_qt.argmax(dim=1) == labels).float().mean()
    return {"loss": loss, "accuracy": accuracy}
