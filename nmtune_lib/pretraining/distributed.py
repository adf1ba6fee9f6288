"""torchrun / DistributedDataParallel set-up of a run: rank and world, the process group, collectives, CPU threads.

Under ``torchrun --nproc_per_node=N`` every rank runs the same code; ``Distributed`` reads torchrun's environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), creates the process group when none exists (NCCL on
CUDA, gloo on CPU) and destroys it on ``close`` if it created it. Outside torchrun it is a world of one, and every
collective returns its input.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from ..cores import usable_cores
from .models import resolve_device


class Distributed:
    """Rank/world of this process; initialises (and later destroys) a process group when torchrun asked for one."""

    def __init__(self, device_type: str):
        import torch.distributed as dist

        self.owned = False
        if device_type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL collectives use the current GPU
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank)) if self.on else 0
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) if self.on else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of ``values`` over all ranks (float64)."""
        if not self.on:
            return values
        nccl = torch.distributed.get_backend() == "nccl"
        t = torch.tensor(values, dtype=torch.float64, device="cuda" if nccl else "cpu")
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owned:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def torch_threads(device: torch.device, config, local_world: int) -> Iterator[int]:
    """CPU: use ``config.num_threads`` (0 = ``$NMTUNE_NUM_THREADS`` or every core this process may use, shared among
    local ranks) inside the block; yields the thread count in use and restores the caller's afterwards."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        wanted = config.num_threads or int(os.environ.get("NMTUNE_NUM_THREADS", "0") or 0) or \
            max(1, usable_cores() // local_world)
        torch.set_num_threads(wanted)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def device_for(config) -> torch.device:
    """The run's device (``config.device``); under torchrun on CUDA, this rank's GPU (``LOCAL_RANK``)."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
