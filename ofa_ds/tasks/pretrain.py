"""OFA pretraining: the vision-language group and the extras group, each a per-token mean.

loss = loss_vl / ntokens_vl + extras_weight * loss_extras / ntokens_extras, as OFA's
criterion does in pair mode (spec ofa_data_and_tasks.md §4.2), with the token counts taken
over the whole optimizer step (see ``tasks/base.py``). Upstream averages per-micro-batch
means instead; the two agree when micro-batches hold equal token counts, and ours does not
change with the data-parallel layout. ``sample_patch_num`` applies to the vision-language
group only.
"""
from __future__ import annotations

from pathlib import Path

from ofa_ds.data.pretrain import PretrainDataConfig, build_pretrain_loader
from ofa_ds.tasks.base import Task, with_moe_aux


class PretrainTask(Task):
    name = "pretrain"

    @property
    def group_weights(self):
        return (1.0, self.cfg.task.extras_weight)

    def data_config(self) -> PretrainDataConfig:
        d = self.cfg.data
        root = Path(d.root)
        opt = lambda p: str(root / p) if p else None
        kwargs = dict(
            vision_language=str(root / d.vision_language), text=opt(d.text), image=opt(d.image),
            detection=opt(d.detection), negative_sample_dir=opt(d.negative_sample_dir),
            patch_image_size=d.patch_image_size, code_image_size=d.code_image_size,
            max_src_length=d.max_src_length, max_tgt_length=d.max_tgt_length,
            max_image_size=d.max_image_size, strict=d.strict)
        if d.weights:
            kwargs["weights"] = dict(d.weights)
        return PretrainDataConfig(**kwargs)

    def build_train_loader(self, *, rank, world_size, seed):
        return build_pretrain_loader(self.data_config(), self.vocab, rank=rank, world_size=world_size,
                                     seed=seed, micro_batch_vl_rows=self.cfg.train.micro_batch,
                                     num_workers=self.cfg.data.num_workers)

    def training_forward(self, model, batch, *, denominators, update_num):
        vl, extras = batch
        out_vl = self.group_loss(model, vl, update_num=update_num,
                                 sample_patch_num=self.cfg.data.sample_patch_num)
        out_ex = self.group_loss(model, extras, update_num=update_num)
        loss_vl = out_vl.loss / max(denominators[0], 1)
        loss_ex = out_ex.loss / max(denominators[1], 1)
        loss = with_moe_aux(self, loss_vl + self.cfg.task.extras_weight * loss_ex)
        report = {"vl_loss": loss_vl.item(), "extras_loss": loss_ex.item(),
                  "ntokens": out_vl.ntokens + out_ex.ntokens,
                  "nsamples": vl["nsentences"] + extras["nsentences"]}
        return loss, report

    def flops_inputs(self, batch):
        """(images side, src len, tgt len, n samples) per group, for the FLOP counter."""
        return [(g["net_input"]["patch_images"].shape[-1], g["net_input"]["src_tokens"].shape[1],
                 g["net_input"]["prev_output_tokens"].shape[1], g["nsentences"],
                 self.cfg.data.sample_patch_num if i == 0 else None)
                for i, g in enumerate(batch)]
