"""The adaptive-reasoning decision: a linear head on the disc embedding.

    u = normalize(h_disc)          (D,)  the last-layer state at <disc_emb>, which the prefill computes anyway
    logits = W u + b               (A,)  one per action of `PolicyConfig.budgets`: no-think, think[≤cap]...

The action decides the first generated token: `<no_think>` (action 0) or `<think>` (every other action, which
also caps the reasoning tokens). An untrained head is built from the LM head's rows of `<no_think>` and
`<think>` with b = 0, so its choice is exactly the LM's own next-token preference between the two markers
(a positive rescaling of the state, the L2 norm here, keeps the argmax); its probabilities start softer,
which leaves room to explore. `mmemb train policy` trains W and b by GRPO with the embedder frozen, so every
embedding stays what it was and the head is the only thing an adaptive model adds.

Saved as `policy.safetensors` beside the embedder's weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .types import InputError

WEIGHTS = "policy.safetensors"


class PolicyHead(nn.Module):
    def __init__(self, width: int, actions: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, actions)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, D) states at <disc_emb> (any scale) -> (B, A) action logits."""
        u = nn.functional.normalize(hidden.float(), dim=-1)
        return self.linear(u.to(self.linear.weight.device))

    @torch.no_grad()
    def init_from_lm(self, lm_rows: torch.Tensor) -> None:
        """lm_rows (2, D): the LM head's rows of <no_think> and <think>. Row 0 -> action 0, row 1 -> the rest."""
        self.linear.weight[0] = lm_rows[0].float()
        self.linear.weight[1:] = lm_rows[1].float()
        self.linear.bias.zero_()

    def save(self, directory: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(directory) / WEIGHTS), metadata={"format": "pt"})

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        want = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if want != got:
            raise InputError(
                f"{path}: policy head shapes {got} do not fit this model {want} "
                "(policy.budgets or the backbone changed); retrain with `mmemb train policy`"
            )
        self.load_state_dict(state)
