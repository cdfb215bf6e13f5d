"""The Task contract: what the engine needs from pretraining or a finetuning head.

The engine never knows which objective it runs. A task builds its data loader, turns a
batch into ``(loss, report)``, and may evaluate. ``report`` holds plain floats for logging;
every ``*_loss`` entry is also logged per stream.

Normalisation: a batch has one or more groups (pretraining: the vision-language group and
the extras group). Each group's summed token loss is divided by that group's token count
over the *whole* optimizer step (all micro-batches, all data-parallel ranks), which the
engine computes first (``token_counts``) and passes in as ``denominators``. The gradient is
then fairseq's sum-of-losses / sum-of-tokens, per group, and does not depend on how the
global batch is split into ranks and micro-batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ofa_ds.tasks.criterion import LossOptions, LossOutput, label_smoothed_cross_entropy


class Loader(Protocol):
    """An iterable of batches (one epoch per ``iter()``) whose position can be saved."""

    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task:
    name = "base"
    group_weights: tuple[float, ...] = (1.0,)
    """Loss weight of each group of a batch."""

    def __init__(self, cfg, vocab):
        self.cfg = cfg
        self.vocab = vocab
        t = cfg.task
        constraint = tuple(int(x) for x in t.constraint_range.split(",")) if t.constraint_range else None
        self.loss_options = LossOptions(label_smoothing=t.label_smoothing, ignore_eos=t.ignore_eos,
                                        constraint_range=constraint,
                                        drop_worst_ratio=t.drop_worst_ratio,
                                        drop_worst_after=t.drop_worst_after)
        # The layout may swap in the vocab-parallel criterion (same contract).
        self.cross_entropy = label_smoothed_cross_entropy
        # MoE: load-balancing losses of this micro-batch's forwards, and their weight (the
        # engine folds in 1/(grad_accum * data-parallel) so it is a mean over the step).
        self.moe_aux_weight = 0.0
        self._aux_losses: list = []

    def build_train_loader(self, *, rank: int, world_size: int, seed: int) -> Loader:
        raise NotImplementedError

    def token_counts(self, batch) -> list[int]:
        """Target tokens per group of this micro-batch."""
        groups = batch if isinstance(batch, (tuple, list)) else [batch]
        return [g["ntokens"] for g in groups]

    def training_forward(self, model, batch, *, denominators: list[float],
                         update_num: int) -> tuple[torch.Tensor, dict]:
        """This micro-batch's share of the step loss: sum over groups of
        weight_g * loss_sum_g / denominators[g]."""
        raise NotImplementedError

    def evaluate(self, model, *, device, **kwargs) -> dict:
        """Metrics on the validation split; empty when the task has none."""
        return {}

    def example_for_logging(self, batch) -> tuple[torch.Tensor, str]:
        """One input image [3, H, W] in [0, 1] with the target's boxes drawn, and its target
        text, for TensorBoard. Boxes are runs of four <bin_i> tokens (x0, y0, x1, y1)."""
        from torchvision.utils import draw_bounding_boxes

        b = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = b["net_input"].get("patch_images")
        if images is None:  # text-only task
            images = torch.zeros(1, 3, 16, 16)
        image = (images[0].float() * 0.5 + 0.5).clamp(0, 1).cpu()
        target = b["target"][0]
        target = target[target.ne(self.vocab.pad)].tolist()
        v = self.vocab
        is_bin = [v.bin_offset <= t < v.bin_offset + v.num_bins for t in target]
        boxes = [[(t - v.bin_offset) / (v.num_bins - 1) * self.cfg.data.max_image_size for t in target[i:i + 4]]
                 for i in range(len(target) - 3) if all(is_bin[i:i + 4]) and (i == 0 or not is_bin[i - 1])]
        if boxes:
            drawn = draw_bounding_boxes((image * 255).to(torch.uint8), torch.tensor(boxes), colors="red", width=2)
            image = drawn.float() / 255
        return image, v.decode(target)

    # -- shared helpers ------------------------------------------------------------------
    def group_loss(self, model, group: dict, *, update_num: int, sample_patch_num=None) -> LossOutput:
        net_input = dict(group["net_input"])
        if sample_patch_num is not None:
            net_input["sample_patch_num"] = sample_patch_num
        logits, _ = model(**net_input)
        if self.moe_aux_weight:
            from ofa_ds.model.moe import collect_moe_aux_loss

            self._aux_losses.append(collect_moe_aux_loss(model))
        return self.cross_entropy(logits, group["target"], group.get("conf"),
                                            options=self.loss_options,
                                            constraint_masks_BTV=group.get("constraint_masks"),
                                            pad=self.vocab.pad, eos=self.vocab.eos, update_num=update_num)


class FinetuneTask(Task):
    """A downstream head: splits, typed options, samples, prediction and scoring.

    See ``ofa_ds/tasks/__init__.py`` for what a subclass provides. The evaluation loop, the
    predictions file and best-checkpoint keeping live in ``ofa_ds/tasks/evaluation.py``.
    """

    default_splits: dict[str, str] = {}
    """split -> TSV path relative to data.root, used when task.<split> is not set."""
    metric = "loss"
    """Key of :meth:`score`'s result that picks the best checkpoint (higher is better)."""
    predictions_name = "predictions.jsonl"
    selected_cols: str | None = None
    """Columns of the TSV rows this task reads, in order (OFA's selected_cols; None: all)."""
    eval_loss = True
    """Also report the label-smoothed loss per token of the split (as OFA's valid_step)."""
    Options = None

    def __init__(self, cfg, vocab):
        from ofa_ds.data.bad_rows import BadRowPolicy
        from ofa_ds.tasks import parse_options

        super().__init__(cfg, vocab)
        self.options = parse_options(cfg)
        self.policy = BadRowPolicy(strict=cfg.data.strict)
        self._files: dict = {}
        self.check_files()

    # -- splits ------------------------------------------------------------------------
    def split_path(self, split: str) -> Path | None:
        rel = getattr(self.cfg.task, split) or self.default_splits.get(split)
        return None if rel is None else Path(self.cfg.data.root) / rel

    def check_files(self) -> None:
        """Fail before any model is built: a split named in the config (or the default train
        split) that does not exist. A missing default valid/test split only disables it."""
        for split in ("train", "valid", "test"):
            path = self.split_path(split)
            named = getattr(self.cfg.task, split) is not None
            if path is not None and not path.is_file() and (named or split == "train"):
                field = f"task.{split}" if named else f"task.{split} (default {self.default_splits[split]})"
                raise ValueError(f"{field}: {path} does not exist (data.root = {self.cfg.data.root})")

    def has_split(self, split: str) -> bool:
        path = self.split_path(split)
        return path is not None and path.is_file()

    def resolve(self, rel: str | None, field: str, *, directory: bool = False) -> Path | None:
        """A file (or ``directory``) named by an option, relative to data.root; must exist."""
        if rel is None:
            return None
        path = Path(rel) if Path(rel).is_absolute() else Path(self.cfg.data.root) / rel
        if not (path.is_dir() if directory else path.is_file()):
            what = "is not a directory" if directory else "does not exist"
            raise ValueError(f"{field}: {path} {what} (data.root = {self.cfg.data.root})")
        return path

    def tsv(self, split: str):
        """The split's TSV file (opened once), giving the fields ``selected_cols`` picks."""
        from ofa_ds.data.tsv import TSVFile

        if split not in self._files:
            if not self.has_split(split):
                raise ValueError(f"task {self.name!r} has no {split} split: set task.{split}")
            self._files[split] = TSVFile(str(self.split_path(split)), selected_cols=self.selected_cols)
        return self._files[split]

    def num_rows(self, split: str) -> int:
        return len(self.tsv(split))

    # -- what a head implements ----------------------------------------------------------
    def build_sample(self, split: str, row: int):
        raise NotImplementedError

    def predict(self, model, batch) -> list[dict]:
        raise NotImplementedError

    def score(self, records: list[dict]) -> dict:
        raise NotImplementedError

    def write_predictions(self, records: list[dict], path: Path) -> None:
        import json

        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps({"id": r["id"], "prediction": r["prediction"], "target": r.get("target")}) + "\n")

    # -- shared machinery ----------------------------------------------------------------
    def collate(self, samples):
        from ofa_ds.tasks.data import collate_task

        return collate_task(samples, pad=self.vocab.pad, vocab_size=len(self.vocab))

    def build_train_loader(self, *, rank, world_size, seed):
        from ofa_ds.tasks.data import SampleLoader

        return SampleLoader(self.num_rows("train"), lambda i: self.build_sample("train", i),
                            collate_fn=self.collate, batch_size=self.cfg.train.micro_batch, rank=rank,
                            world_size=world_size, seed=seed, policy=self.policy,
                            path=str(self.split_path("train")))

    def training_forward(self, model, batch, *, denominators, update_num):
        out = self.group_loss(model, batch, update_num=update_num)
        loss = with_moe_aux(self, out.loss / max(denominators[0], 1))
        return loss, {f"{self.name}_loss": loss.item(), "ntokens": out.ntokens, "nsamples": batch["nsentences"]}

    def flops_inputs(self, batch):
        n = batch["net_input"]
        images = n.get("patch_images")
        return [(images.shape[-1] if images is not None else 0, n["src_tokens"].shape[1],
                 n["prev_output_tokens"].shape[1], batch["nsentences"], None)]

    def evaluate(self, model, *, device, split: str = "valid", rank: int = 0, world_size: int = 1,
                 group=None, max_rows: int | None = None, out_path=None) -> dict:
        """Score ``split`` (sharded over ``world_size`` data-parallel ranks); every rank gets
        the metrics, rank 0 writes the predictions to ``out_path`` when given."""
        from ofa_ds.tasks.evaluation import evaluate_split

        if not self.has_split(split):
            return {}
        if max_rows is None and split == "valid" and self.cfg.task.valid_max_rows:
            max_rows = self.cfg.task.valid_max_rows
        return evaluate_split(self, model, split, device=device, rank=rank, world_size=world_size,
                              group=group, max_rows=max_rows, out_path=out_path)


def with_moe_aux(task: Task, loss: torch.Tensor) -> torch.Tensor:
    """Add the weighted mean load-balancing loss of the forwards since the last call."""
    aux, task._aux_losses = task._aux_losses, []
    if not aux:
        return loss
    return loss + task.moe_aux_weight * sum(aux) / len(aux)


def move_to(batch, device, image_dtype=None):
    """Tensors to ``device``; ``patch_images`` also to ``image_dtype`` when given (bf16/fp16
    engines convert the module, not its inputs). Other float tensors, such as the per-sample
    loss weights ``conf``, keep their fp32 precision."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: (v.to(device, image_dtype, non_blocking=True) if k == "patch_images" and image_dtype is not None and v is not None
                    else move_to(v, device, image_dtype)) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device, image_dtype) for v in batch)
    return batch
