"""Crash-safe training checkpoints: DeepSpeed's engine state plus ours.

Layout under ``<out_dir>/checkpoints``::

    step_00000050/          DeepSpeed files (model, optimizer, scheduler) + ofa_rank{r}.pt
    latest                  the tag of the newest *complete* checkpoint

Each rank writes its own ``ofa_rank{r}.pt`` (data position, RNG of torch/numpy/python,
step, config). ``latest`` is replaced atomically by rank 0 only after every rank has
finished writing, so a crash mid-save leaves the previous checkpoint as ``latest``.

A save that fails (a full disk above all) is agreed on by all ranks, the partial ``step_N``
directory is removed, and :class:`CheckpointSaveError` says what happened and which checkpoint
is still the latest; ``ofa-ds pretrain|finetune`` print it and exit 1. (If DeepSpeed itself
fails on one rank between its own collectives, the other ranks can still hang there.)
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ofa_ds.engine.distributed import all_reduce_sum, barrier
from ofa_ds.engine.safe_load import guard_deepspeed_loads, safe_load

LATEST = "latest"
# A full disk shows as OSError(ENOSPC), as "RuntimeError: write(): fd N failed with No space left
# on device" (torch's legacy writer, which DeepSpeed uses) or as "[enforce fail at
# inline_container.cc:...]" with no errno at all (torch's zip writer); so any failed write with
# less than this much free space left is taken as a full disk.
LOW_SPACE_BYTES = 64 << 20
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the previous one (named in the message) is intact."""


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
    try:
        tmp.write_text(tag + "\n")
        os.replace(tmp, ckpt_dir / LATEST)  # atomic on POSIX
    finally:
        tmp.unlink(missing_ok=True)


def _out_of_space(err: BaseException, where: Path) -> bool:
    """Whether a failed write means a full disk (call before cleaning up: space comes back)."""
    chain = err
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(chain) for text in _NO_SPACE_TEXT):
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return shutil.disk_usage(where).free < LOW_SPACE_BYTES
    except OSError:
        return False


def _try(write, ckpt_dir: Path):
    """Run ``write``; returns None, or (error, out_of_space) when it failed."""
    try:
        write()
        return None
    except (OSError, RuntimeError) as err:
        return err, _out_of_space(err, ckpt_dir)


def _agree(failure, engine) -> tuple[bool, bool]:
    """(some rank failed, some rank ran out of space), the same on every rank."""
    mine = [float(failure is not None), float(failure is not None and failure[1])]
    failed, no_space = all_reduce_sum(mine, device=getattr(engine, "device", None))
    return failed > 0, no_space > 0


def _abandon(ckpt_dir: Path, tag: str, step: int, previous: str | None, failure, no_space: bool, rank: int):
    if rank == 0:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    barrier()
    kept = (f"the previous checkpoint {previous} is intact" if previous
            else "there is no earlier checkpoint") + f" (the partial {tag} was removed)"
    if no_space:
        what = f"no space left on {ckpt_dir} while saving step {step}"
    else:
        what = f"could not save step {step} to {ckpt_dir}"
    cause = f": {type(failure[0]).__name__}: {failure[0]}" if failure is not None else " (on another rank)"
    raise CheckpointSaveError(f"{what}; {kept}{cause}") from (failure[0] if failure is not None else None)


def save(engine, ckpt_dir: Path, step: int, ours: dict, *, rank: int, keep_last: int, write_extra=None) -> str:
    """``write_extra(step_dir)``: more files of this checkpoint (collective), written before
    ``latest`` may move (the layout-free copy, ``engine/portable.py``)."""
    tag = tag_for(step)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    previous = read_latest(ckpt_dir)

    def write_files():
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        if write_extra is not None:  # collective (the layout-free copy gathers over DP)
            write_extra(ckpt_dir / tag)
        torch.save({**ours, "rng": rng_state(), "step": step}, ckpt_dir / tag / f"ofa_rank{rank}.pt")

    # Every rank's files are on disk (or a rank failed) before the pointer moves; _agree is the barrier.
    failure = _try(write_files, ckpt_dir)
    failed, no_space = _agree(failure, engine)
    if not failed:
        failure = _try(lambda: _write_latest(ckpt_dir, tag), ckpt_dir) if rank == 0 else None
        failed, no_space = _agree(failure, engine)
    if failed:
        _abandon(ckpt_dir, tag, step, previous, failure, no_space, rank)
    if rank == 0:
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
    return read_rank_state(path, trusted=trusted)


def read_rank_state(path: Path, *, trusted: bool = False) -> dict:
    """One rank's ``ofa_rank{r}.pt`` (data position, RNG, step, config), ``weights_only``."""
    return safe_load(path, trusted=trusted)
