"""The trainer's one door into ``ofa_ds.parallel``: the DeepSpeed engine for a layout.

* plain data parallelism (tp = pp = 1, ZeRO 0-3): ``deepspeed.initialize`` on the model;
* DP x TP (ZeRO 0-3, +offload at 3): the TP plan is applied to the built model, the loss is
  the vocab-parallel cross entropy, DeepSpeed gets our ``mpu``;
* PP x TP x DP (ZeRO 0/1): the model becomes a DeepSpeed ``PipelineModule``; every group of
  a batch (vision-language, extras) is one pipeline micro-batch.

Under TP the vocabulary is padded to a multiple of 128*tp rows (59457 divides by nothing
useful); the padding rows are masked in the loss and cut again on export.
"""
from __future__ import annotations

import functools

import torch

from ofa_ds.config.schema import TrainConfig
from ofa_ds.tasks.criterion import label_smoothed_cross_entropy


class Layout:
    def __init__(self, cfg: TrainConfig, world_size: int, rank: int):
        self.cfg = cfg
        self.tp, self.pp = cfg.parallel.tp, cfg.parallel.pp
        self.parallel = self.tp > 1 or self.pp > 1
        self.groups = self.dims = None
        self.dp_rank, self.dp_size = rank, world_size
        self.valid_vocab_size: int | None = None
        if self.pp > 1 and cfg.data.sample_patch_num is not None and cfg.task.name == "pretrain":
            raise ValueError("parallel.pp > 1 runs one pipeline for both pretraining groups, so patch "
                             "sampling cannot apply to the vision-language group alone: set "
                             "data.sample_patch_num=none")

    def model_vocab_size(self, vocab_size: int) -> int:
        """Rows of the embedding for this layout (padded under TP)."""
        if self.tp == 1:
            return vocab_size
        from ofa_ds.parallel import padded_vocab_size

        self.valid_vocab_size = vocab_size
        return padded_vocab_size(vocab_size, self.tp)

    def setup_groups(self, model_cfg, ds_config: dict) -> None:
        """Validate the layout (before any group exists) and build the process groups."""
        if not self.parallel:
            return
        from ofa_ds.parallel import ParallelDims, build_groups

        t = self.cfg.train
        self.dims = ParallelDims(tp=self.tp, pp=self.pp, zero_stage=t.zero_stage, offload=t.offload,
                                 precision=t.precision).validate(self.dp_size, model_cfg, ds_config)
        self.groups = build_groups(self.dims)
        self.dp_rank, self.dp_size = self.groups.dp_rank, self.dims.dp

    def cross_entropy(self):
        """The criterion for this layout, with ``label_smoothed_cross_entropy``'s contract."""
        if self.tp == 1:
            return label_smoothed_cross_entropy
        from ofa_ds.parallel import vocab_parallel_label_smoothed_cross_entropy

        return functools.partial(vocab_parallel_label_smoothed_cross_entropy, tp=self.groups.tp,
                                 valid_vocab_size=self.valid_vocab_size)

    def initialize(self, model, ds_config: dict, lr_scheduler, pipeline_loss_fn=None):
        import deepspeed

        params = lambda m: [p for p in m.parameters() if p.requires_grad]
        if any(getattr(m, "moe", None) is not None for m in model.modules()):
            from ofa_ds.model.moe import moe_param_groups

            # DeepSpeed's MoE engine reduces expert gradients over the expert-data group.
            params = lambda m: moe_param_groups(m, weight_decay=self.cfg.optim.weight_decay)
        if not self.parallel:
            return deepspeed.initialize(model=model, model_parameters=params(model), config=ds_config,
                                        lr_scheduler=lr_scheduler)
        from ofa_ds.parallel import apply_tensor_parallel, build_pipeline_module, deepspeed_initialize

        if self.pp == 1:
            apply_tensor_parallel(model, self.groups)
            return deepspeed_initialize(model, self.groups, ds_config, model_parameters=params(model),
                                        lr_scheduler=lr_scheduler)
        d = self.cfg.data
        module = build_pipeline_module(model.config, self.dims, self.groups, pipeline_loss_fn,
                                       state_dict=model.state_dict(), image_size=d.patch_image_size,
                                       text_len=d.max_src_length, tgt_len=d.max_tgt_length)
        return deepspeed_initialize(module, self.groups, ds_config, model_parameters=params(module),
                                    lr_scheduler=lr_scheduler)

    def full_state_dict(self, engine) -> dict | None:
        """The single-device state dict on global rank 0 (None elsewhere); collective."""
        import torch.distributed as dist

        module = engine.module
        if not self.parallel:
            return module.state_dict() if dist.get_rank() == 0 else None
        from ofa_ds.parallel import gather_tensor_parallel_state_dict

        def gathered(m):
            return gather_tensor_parallel_state_dict(m, self.groups.tp) if self.tp > 1 else m.state_dict()

        if self.pp == 1:
            state = gathered(module)
        else:
            # Each stage holds its pieces under single-device names; merge them on rank 0.
            from ofa_ds.parallel.pipeline import _local_pieces

            local, seen = {}, set()
            for piece in _local_pieces(module):
                if id(piece) not in seen:
                    seen.add(id(piece))
                    local.update({k: v.cpu() for k, v in gathered(piece).items()})
            parts = [None] * dist.get_world_size(self.groups.pp_group)
            dist.all_gather_object(parts, local, group=self.groups.pp_group)
            state = {k: v for part in parts for k, v in part.items()}
        if dist.get_rank() != 0:
            return None
        from ofa_ds.model.state_dict_adapter import tie_embeddings

        state = tie_embeddings(state, "the trained model")
        if self.valid_vocab_size is not None:
            state = {k: (v[: self.valid_vocab_size] if v.dim() == 2 and v.shape[0] != self.valid_vocab_size
                         and k.endswith(("embed_tokens.weight", "output_projection.weight")) else v)
                     for k, v in state.items()}
        return state


def pad_vocab(model, rows: int):
    """A copy of ``model`` whose token embedding has ``rows`` rows (new rows zero)."""
    from ofa_ds.model.ofa import OFAModel

    if model.config.vocab_size == rows:
        return model
    bigger = OFAModel(model.config.replace(vocab_size=rows), init_weights=False)
    state = model.state_dict()
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        old = state[key]
        state[key] = torch.cat([old, old.new_zeros(rows - old.shape[0], old.shape[1])])
    bigger.load_state_dict(state)
    return bigger
