"""Worker body for the engine-level layout tests: several ``Trainer`` runs, one after the
other, in one spawned group of processes (a process start costs more than a run of the
``test`` flavor). Each job is ``(name, overrides, options)``; the worker returns, per job,
the losses and whatever the options asked it to check.

Options: ``frozen`` (the ResNet weights / BatchNorm statistics before and after training, as
single-device tensors on rank 0), ``masks`` (a dropout mask and a patch permutation drawn by
each rank's step RNG at step 0, gathered), ``drift`` (perturb one replicated parameter on the
last rank, then expect the drift check to name it).
"""
from __future__ import annotations

import gc
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _resnet_state(trainer) -> dict | None:
    state = trainer.layout.full_state_dict(trainer.engine)
    if state is None:
        return None
    return {k: v.clone() for k, v in state.items() if k.startswith("encoder.embed_images.")}


def _masks(trainer) -> list:
    trainer.rng.begin_step(0)
    mine = torch.cat([F.dropout(torch.ones(32), 0.5, training=True),
                      torch.rand(16, generator=trainer.rng.patch_generator).argsort().float()])
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return everyone


def _drift(trainer) -> str:
    from ofa_ds.parallel.layers import is_sharded

    name, p = next((n, p) for n, p in trainer.engine.module.named_parameters() if not is_sharded(p)
                   and "layer_norm" in n)
    if dist.get_rank() == dist.get_world_size() - 1:
        with torch.no_grad():
            p.add_(1e-3)
    try:
        trainer.layout.check_drift(trainer.engine, trainer.step)
    except RuntimeError as err:
        assert name in str(err), (name, str(err))
        return str(err)
    raise AssertionError("the drift check did not notice a perturbed replicated parameter")


def engine_jobs(rank: int, world: int, sample_data: str, root: str, jobs: list) -> dict:
    from ofa_ds.engine.trainer import Trainer
    from tests.engine.helpers import engine_config

    results = {}
    for name, overrides, options in jobs:
        cfg = engine_config(Path(sample_data), Path(root) / name, **overrides)
        trainer = Trainer(cfg)
        out = {}
        if "masks" in options:
            out["masks"] = _masks(trainer)
        if "frozen" in options:
            out["before"] = _resnet_state(trainer)
        out["losses"] = {h["step"]: h["loss"] for h in trainer.run()}
        if "frozen" in options:
            out["after"] = _resnet_state(trainer)
        if "drift" in options:
            out["drift"] = _drift(trainer)
        results[name] = out
        del trainer
        gc.collect()
        dist.barrier()
    return results
