"""One process, or several under ``torchrun`` (torch.distributed, DDP).

The process group is set up from the environment torchrun provides (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on GPUs, gloo on CPUs. Without those
variables everything runs in one process and the helpers below do nothing.
"""

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "cleanup_distributed", "all_reduce", "all_gather_objects",
           "barrier"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and choose this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _pick_device(device, local_rank)
    if world_size > 1:
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        if chosen.type == "cpu":
            # processes share the machine's cores; oversubscription slows every one of them
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistContext(rank, world_size, local_rank, chosen)


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, ctx: DistContext, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce over the processes (identity in one process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in one process)."""
    if not ctx.distributed:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
