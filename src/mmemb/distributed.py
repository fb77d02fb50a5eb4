"""The ranks of a torchrun (or `accelerate launch`) job, for inference: embed and eval split their work by
rank and sync with torch.distributed's barrier. One process without torchrun is rank 0 of 1.

torchrun's rendezvous sets RANK, WORLD_SIZE and LOCAL_RANK; multi-node works the same way. A rank uses
cuda:LOCAL_RANK (NCCL) where there is a GPU, else the CPU (gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: str | None = None  # None: the model's default

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def from_env() -> Ranks:
    """This process's place: (0, 1) outside torchrun; else the process group is started here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = None
    if torch.cuda.is_available():
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device else "gloo")
    return Ranks(dist.get_rank(), world, device)


ONE = Ranks()  # one process: rank 0 of 1
