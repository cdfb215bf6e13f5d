"""Run a function on N CPU processes (gloo) from pytest, and collect what each returns.

Each worker gets the env that ``deepspeed.init_distributed`` / torchrun would set, one
intra-op thread (the CI machine has 2 cores for up to 4 ranks), and DeepSpeed's CPU shm
op disabled before init (spec parallelism.md §1.3: otherwise every init JIT-compiles it
for minutes). Exceptions in a worker fail the test with the worker's traceback.
"""
from __future__ import annotations

import os
import socket
import tempfile
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_worker_process_group(use_deepspeed: bool) -> None:
    if use_deepspeed:
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
    else:
        torch.distributed.init_process_group("gloo")


def _entry(local_rank, fn, world_size, port, out_dir, use_deepspeed, args):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)  # DeepSpeed's deprecated c10d calls, once per step
    init_worker_process_group(use_deepspeed)
    result = fn(local_rank, world_size, *args)
    torch.save(result, Path(out_dir) / f"rank{local_rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def run_workers(fn, world_size: int, *args, use_deepspeed: bool = True) -> list:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; returns their
    results in rank order (anything ``torch.save`` can write)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(fn, world_size, free_port(), out_dir, use_deepspeed, args),
                           nprocs=world_size, join=True, start_method="spawn")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
