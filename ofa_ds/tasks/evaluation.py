"""Scoring a whole split, as users run it and as training validates: ``ofa-ds evaluate``.

One code path for both (spec §6): the split's rows are dealt to the data-parallel ranks
(rank r takes rows r, r+W, ...), each rank predicts its rows in batches of ``task.eval_batch``,
the per-row records are gathered to rank 0 in row order, rank 0 scores them with the task's
``score`` and writes the predictions file, and every rank receives the metrics. So the metric
and the predictions file do not depend on the number of processes.

Usage::

    ofa-ds evaluate --config launch/configs/vqa_demo_cpu.toml --checkpoint runs/vqa_demo/best --split test
    torchrun --nproc_per_node 8 -m ofa_ds.tasks.evaluation --config ... --checkpoint ... --split valid

``--checkpoint``: an exported model (``out_dir/best``, ``out_dir/final``: ofa-ds, OFA-HF or a
fairseq ``.pt``) or a run directory (its ``best/``, else ``final/``). The metrics are printed,
appended to ``<out>/eval_<split>.json`` and the predictions written beside them (``--out``,
default: the checkpoint directory).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.tasks.base import move_to

logger = logging.getLogger("ofa_ds.evaluate")


def shard_rows(n_rows: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n_rows, world_size))


def _gather(obj, group, world_size: int) -> list:
    import torch.distributed as dist

    if world_size == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj, group=group)
    return out


def _broadcast(obj, group, world_size: int):
    import torch.distributed as dist

    if world_size == 1 or not dist.is_initialized():
        return obj
    box = [obj]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


@torch.no_grad()
def evaluate_split(task, model, split: str, *, device, rank: int = 0, world_size: int = 1, group=None,
                   max_rows: int | None = None, out_path=None) -> dict:
    """Metrics ``{split}_<name>`` of ``task`` on ``split``; see the module docstring."""
    n = task.num_rows(split)
    if max_rows:
        n = min(n, max_rows)
    rows = shard_rows(n, rank, world_size)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    image_dtype = dtype if dtype != torch.float32 else None
    records, loss_sum, ntokens, bad = [], 0.0, 0, 0
    bs = task.cfg.task.eval_batch
    for start in range(0, len(rows), bs):
        samples, kept = [], []
        for i in rows[start:start + bs]:
            try:
                samples.append(task.build_sample(split, i))
                kept.append(i)
            except BadRow as err:
                task.policy.record(err)
                bad += 1
        if not samples:
            continue
        batch = move_to(task.collate(samples), device, image_dtype)
        if task.eval_loss:
            out = task.group_loss(model, batch, update_num=0)
            loss_sum, ntokens = loss_sum + float(out.loss), ntokens + out.ntokens
        for i, sample, rec in zip(kept, samples, task.predict(model, batch)):
            rec = {"row": i, "id": _jsonable(sample.id), **rec}
            rec.setdefault("target", _jsonable(sample.ref))
            records.append({k: _jsonable(v) for k, v in rec.items()})
    model.train(was_training)

    gathered = _gather((records, loss_sum, ntokens, bad), group, world_size)
    metrics = None
    if rank == 0:
        all_records = sorted((r for part in gathered for r in part[0]), key=lambda r: r["row"])
        metrics = {f"{split}_{k}": v for k, v in task.score(all_records).items()}
        total_tokens = sum(p[2] for p in gathered)
        if task.eval_loss and total_tokens:
            metrics[f"{split}_loss"] = sum(p[1] for p in gathered) / total_tokens
        n_bad = sum(p[3] for p in gathered)
        if n_bad:
            metrics[f"{split}_bad_rows"] = n_bad
        if out_path is not None:
            out_path = Path(out_path)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            task.write_predictions(all_records, out_path)
    return _broadcast(metrics, group, world_size)


# -- best checkpoint -----------------------------------------------------------------------
class BestKeeper:
    """Tracks the best value of the task's metric; ``improved(metrics)`` says whether to export."""

    def __init__(self, key: str, best: float | None = None):
        self.key, self.best = key, best

    def improved(self, metrics: dict) -> bool:
        value = metrics.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None or value > self.best:
            self.best = float(value)
            return True
        return False


# -- ofa-ds evaluate -------------------------------------------------------------------------
def resolve_checkpoint(path: str) -> Path:
    p = Path(path)
    # A run directory holds its own config.json (the training config) but no weights.
    weights = ("*.pt", "*.bin", "*.safetensors")
    if p.is_dir() and not any(any(p.glob(w)) for w in weights):
        for sub in ("best", "final"):
            if (p / sub).exists():
                return p / sub
    if not p.exists():
        raise ValueError(f"--checkpoint {path}: does not exist")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-ds evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the task's TOML config (task, data sections)")
    p.add_argument("--checkpoint", required=True, help="exported model dir / .pt, or a run directory")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--out", help="directory for the predictions and metrics (default: the checkpoint's)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. task.eval_batch=16")
    return p


def main(argv=None) -> int:
    from ofa_ds.config.load import load_config
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.engine.distributed import init_distributed
    from ofa_ds.model.ofa import OFAModel
    from ofa_ds.tasks import build_task

    args = _parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    vocab_dir = Path(cfg.data.vocab_dir)
    vocab = Vocabulary.from_dir(vocab_dir if vocab_dir.is_absolute() else Path(cfg.data.root) / vocab_dir)
    task = build_task(cfg, vocab)  # checks the split files before the model is loaded
    if not task.has_split(args.split):
        raise ValueError(f"task {cfg.task.name!r}: no {args.split} split (set task.{args.split})")
    ckpt = resolve_checkpoint(args.checkpoint)
    rank, world_size = init_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # NCCL gathers on this rank's GPU
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    model = OFAModel.from_pretrained(ckpt).to(device).eval()
    out_dir = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    pred_path = out_dir / f"{args.split}_{task.predictions_name}"
    metrics = task.evaluate(model, device=device, split=args.split, rank=rank, world_size=world_size,
                            out_path=pred_path, max_rows=0)
    if rank == 0:
        record = {"checkpoint": str(ckpt), "split": args.split, "rows": task.num_rows(args.split), **metrics}
        (out_dir / f"eval_{args.split}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))
        logger.info("predictions: %s", pred_path)
    return 0


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    sys.exit(main(argv))
