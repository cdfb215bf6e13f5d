"""Objectives over the same OFAModel, chosen by ``task.name``: the task registry.

How a new head plugs in (one file per task, nothing else to edit but ``TASKS`` below):

1. Write ``ofa_ds/tasks/<task>.py`` with a class derived from
   :class:`ofa_ds.tasks.base.FinetuneTask` and add ``"<name>": "<module>:<Class>"`` to ``TASKS``.
2. Class attributes: ``name``; ``default_splits`` (``{"train": "finetune/<task>/train.tsv", ...}``,
   relative to ``data.root``; ``task.train``/``valid``/``test`` override them); ``metric`` (the
   key of :meth:`score`'s result that picks the best checkpoint, higher is better); and an
   ``Options`` dataclass whose fields (with docstrings) are the task's typed ``[task.options]``
   (``task.options.<field>=value`` on the command line). ``self.options`` holds the parsed
   instance; the generic loss options (label smoothing, ignore-EOS, constraint range, drop-worst)
   stay in ``[task]`` and reach the criterion through ``self.loss_options``.
3. Methods:
   * ``build_sample(split, row) -> TaskSample`` (``ofa_ds/tasks/data.py``): one TSV row into
     source/target/prev_output plus optional ``constraint_rows`` (allowed ids per target
     position; the collate turns them into the ``[B, T, V]`` mask the criterion applies),
     ``decoder_prompt`` and ``ref`` (whatever :meth:`score` needs). Raise
     :class:`~ofa_ds.data.bad_rows.BadRow` (file, row, field) for unusable rows: the loaders
     count and skip them, or fail under ``data.strict``.
   * ``predict(model, batch) -> list[dict]``: one record per row with at least ``prediction``
     (the id and ``target`` are filled in from the batch unless set). Generation heads call
     ``ofa_ds.generation``; answer-set heads use ``ofa_ds.tasks.candidates``.
   * ``score(records) -> dict``: the metrics over the whole split (all ranks' records, in row
     order).
   * optionally ``write_predictions(records, path)`` (default: JSONL of id, prediction,
     target) and ``predictions_name``; ``training_forward`` if the loss is not the plain
     label-smoothed cross entropy of the batch (SCST).
4. Training, ``ofa-ds finetune``, the in-training evaluation every ``task.eval_every`` steps,
   best-checkpoint keeping and ``ofa-ds evaluate --split valid|test`` (sharded over
   data-parallel ranks, gathered, predictions file written) then work without further code
   (``ofa_ds/tasks/evaluation.py``).
"""
from __future__ import annotations

import dataclasses
import importlib

# name -> "module:Class"; imported on use so that one task's dependencies never load for another.
TASKS: dict[str, str] = {
    "pretrain": "ofa_ds.tasks.pretrain:PretrainTask",
    "caption": "ofa_ds.tasks.caption:CaptionTask",
    "vqa_gen": "ofa_ds.tasks.vqa:VqaGenTask",
    "snli_ve": "ofa_ds.tasks.snli_ve:SnliVeTask",
    "image_classify": "ofa_ds.tasks.image_classify:ImageClassifyTask",
    **{g: f"ofa_ds.tasks.glue:{g.upper()}Task" for g in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2")},
    "caption_scst": "ofa_ds.tasks.caption_scst:CaptionScstTask",
    "refcoco": "ofa_ds.tasks.refcoco:RefcocoTask",
    "gigaword": "ofa_ds.tasks.gigaword:GigawordTask",
    "image_gen": "ofa_ds.tasks.image_gen:ImageGenTask",
    "image_gen_clip_scst": "ofa_ds.tasks.image_gen_clip_scst:ImageGenClipScstTask",
}
ALIASES = {"vqa": "vqa_gen", "imagenet": "image_classify", "refcocoplus": "refcoco", "refcocog": "refcoco"}


def task_class(name: str):
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise ValueError(f"unknown task.name {name!r}; choose from {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_options(cfg):
    """Validate ``task.name`` and type ``task.options`` with the task's ``Options`` dataclass."""
    from ofa_ds.config.load import _coerce

    cls = task_class(cfg.task.name)
    options_cls = getattr(cls, "Options", None)
    raw = cfg.task.options
    if dataclasses.is_dataclass(raw):
        return raw
    if options_cls is None:
        if raw:
            raise ValueError(f"task {cfg.task.name!r} takes no [task.options], got {sorted(raw)}")
        return None
    import typing

    hints = typing.get_type_hints(options_cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ValueError(f"task.options: unknown field(s) {sorted(unknown)} for task {cfg.task.name!r}; "
                         f"known: {sorted(hints)}")
    values = {k: _coerce(v, hints[k], f"task.options.{k}") for k, v in raw.items()}
    options = options_cls(**values)
    if hasattr(options, "validate"):
        options.validate()
    return options


def build_task(cfg, vocab):
    return task_class(cfg.task.name)(cfg, vocab)
