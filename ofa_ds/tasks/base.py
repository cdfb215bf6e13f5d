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

    def evaluate(self, model, *, device) -> dict:
        """Metrics on the validation split; empty when the task has none."""
        return {}

    def example_for_logging(self, batch) -> tuple[torch.Tensor, str]:
        """One input image [3, H, W] in [0, 1] with the target's boxes drawn, and its target
        text, for TensorBoard. Boxes are runs of four <bin_i> tokens (x0, y0, x1, y1)."""
        from torchvision.utils import draw_bounding_boxes

        b = batch[0] if isinstance(batch, (tuple, list)) else batch
        image = (b["net_input"]["patch_images"][0].float() * 0.5 + 0.5).clamp(0, 1).cpu()
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
        return {k: (v.to(device, image_dtype, non_blocking=True) if k == "patch_images" and image_dtype is not None
                    else move_to(v, device, image_dtype)) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device, image_dtype) for v in batch)
    return batch
