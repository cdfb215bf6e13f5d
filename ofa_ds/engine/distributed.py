"""Process-group start-up that works with torchrun, the deepspeed launcher, or plain python."""
from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, world_size).

    A plain ``python`` start gets a one-process group on localhost (DeepSpeed would
    otherwise try MPI discovery and fail without mpi4py).
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    # DeepSpeed builds a shared-memory all-reduce op (a 4-minute C++ compile) on every CPU
    # init; it serves inference only, so training turns it off.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed()
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], group=None, device=None) -> list[float]:
    """Sum a few host-side numbers over ``group`` (float64, so token counts stay exact).
    ``device``: where the backend communicates (CUDA for NCCL)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()
