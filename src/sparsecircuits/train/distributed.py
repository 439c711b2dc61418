"""Data-parallel training under torchrun: one process per device, gradients averaged every step.

Every rank holds the whole model and applies the same update (the same averaged gradients, the same
RMS clip, the same weight top-k), so weights stay identical without broadcasting them. Each rank
reads its own rows of the global batch; only rank 0 writes the run directory.

    torchrun --nproc_per_node N -m sparsecircuits train --config small --out runs/ddp
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import SparseCircuitsError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun describes (NCCL when training on CUDA, gloo on CPU);
        alone otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda" and local_rank >= torch.cuda.device_count():
            raise SparseCircuitsError(
                f"torchrun started more processes on this node than it has CUDA devices ({torch.cuda.device_count()}):"
                " give --nproc_per_node at most that, or --set train.device=cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, model: torch.nn.Module) -> None:
        if not self.active:
            return
        for param in model.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
            param.grad.div_(self.world_size)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (stop requests must be taken together)."""
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group together. A rank that exits while gloo's threads still run in
        another aborts ("terminate called without an active exception")."""
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
