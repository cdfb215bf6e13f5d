"""Crash-safe training checkpoints: DeepSpeed's engine state plus ours.

Layout under ``<out_dir>/checkpoints``::

    step_00000050/          DeepSpeed files (model, optimizer, scheduler) + ofa_rank{r}.pt
    latest                  the tag of the newest *complete* checkpoint

Each rank writes its own ``ofa_rank{r}.pt`` (data position, RNG of torch/numpy/python,
step, config). ``latest`` is replaced atomically by rank 0 only after every rank has
finished writing, so a crash mid-save leaves the previous checkpoint as ``latest``.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ofa_ds.engine.distributed import barrier
from ofa_ds.engine.safe_load import guard_deepspeed_loads, safe_load

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(ckpt_dir: Path) -> str | None:
    path = ckpt_dir / LATEST
    return path.read_text().strip() if path.is_file() else None


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    tmp = ckpt_dir / f".{LATEST}.tmp"
    tmp.write_text(tag + "\n")
    os.replace(tmp, ckpt_dir / LATEST)  # atomic on POSIX


def save(engine, ckpt_dir: Path, step: int, ours: dict, *, rank: int, keep_last: int) -> str:
    tag = tag_for(step)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
    torch.save({**ours, "rng": rng_state(), "step": step}, ckpt_dir / tag / f"ofa_rank{rank}.pt")
    barrier()  # every rank's files are on disk before the pointer moves
    if rank == 0:
        _write_latest(ckpt_dir, tag)
        _prune(ckpt_dir, keep_last, current=tag)
    barrier()
    return tag


def _prune(ckpt_dir: Path, keep_last: int, current: str) -> None:
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    complete = [t for t in tags if t <= current]
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def load(engine, ckpt_dir: Path, *, rank: int, world_size: int, trusted: bool = False) -> dict:
    """Restore the newest complete checkpoint; returns our state (without RNG applied yet).

    Every file is read with ``weights_only=True`` (``safe_load.py``); ``trusted`` is the explicit
    opt-out (``train.trust_checkpoint_pickle``) for trusted legacy files."""
    tag = read_latest(ckpt_dir)
    if tag is None:
        raise ValueError(f"--resume: no complete checkpoint in {ckpt_dir} (no '{LATEST}' file)")
    path = ckpt_dir / tag / f"ofa_rank{rank}.pt"
    if not path.is_file():
        raise ValueError(f"{path} missing: the checkpoint was written by {world_size} ranks? "
                         "Resume with the world size it was saved with")
    guard_deepspeed_loads(engine, trusted=trusted)
    load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load {ckpt_dir / tag}")
    return safe_load(path, trusted=trusted)
