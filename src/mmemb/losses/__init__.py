"""Losses computed from embeddings (the model embeds; losses take embeddings).

- ``infonce``: symmetric InfoNCE with in-batch and hard negatives, gathered across ranks (``info_nce``,
  ``gather_with_grad``).
- ``gradcache``: full-batch contrastive gradients with one chunk's activation memory
  (``gradcache_backward``) and its plain reference (``full_batch_backward``).
- ``policy``: GRPO pieces on per-token log-probabilities (group advantages, clipped ratio, k3 KL).
"""

from .gradcache import full_batch_backward, gradcache_backward
from .infonce import gather_with_grad, info_nce

__all__ = ["full_batch_backward", "gather_with_grad", "gradcache_backward", "info_nce"]
