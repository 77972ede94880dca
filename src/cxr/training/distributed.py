"""Multi-process training through ``torchrun`` (PyTorch DDP), and its no-op single-process case.

``torchrun --nproc-per-node N -m cxr train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them, starts the process group (NCCL on CUDA, gloo on
the CPU) and picks this rank's device. Without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cxr.devices import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the ``torchrun`` job described by the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_shards(info: Dist, shard, total: int):
    """Reassemble rows split as ``rows[rank::world_size]`` (see ``CacheBatches.shard``).

    Args:
        shard: numpy array (n_rank, ...) of this rank's rows.
        total: the number of rows over all ranks.

    Returns:
        numpy array (total, ...) in the original row order, on every rank.
    """
    if not info.enabled:
        return shard
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, shard)
    out = np.empty((total, *shard.shape[1:]), dtype=shard.dtype)
    for rank, part in enumerate(parts):
        out[rank :: info.world_size] = part
    return out


def barrier(info: Dist) -> None:
    """Wait for every rank (no-op in one process)."""
    if info.enabled:
        dist.barrier()
