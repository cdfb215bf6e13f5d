"""Objectives over the same OFAModel, chosen by ``task.name``."""
from __future__ import annotations


def build_task(cfg, vocab):
    from ofa_ds.tasks.caption import CaptionTask
    from ofa_ds.tasks.pretrain import PretrainTask

    tasks = {"pretrain": PretrainTask, "caption": CaptionTask}
    if cfg.task.name not in tasks:
        raise ValueError(f"unknown task {cfg.task.name!r}; choose from {sorted(tasks)}")
    return tasks[cfg.task.name](cfg, vocab)
