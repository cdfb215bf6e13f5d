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

    def describe(self, world_size: int | None = None) -> dict:
        """The layout a checkpoint records (``engine/portable.py``); plain JSON values."""
        import torch.distributed as dist

        world = world_size if world_size is not None else dist.get_world_size()
        return {"tp": self.tp, "pp": self.pp, "dp": world // (self.tp * self.pp), "world_size": world,
                "zero_stage": self.cfg.train.zero_stage}

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
        # The pieces are new modules: apply the model options to them again (freezing by
        # single-device name; the same per-layer recomputation as the single-device model).
        from ofa_ds.kernels.wrap import apply_activation_checkpointing
        from ofa_ds.parallel.pipeline import _local_pieces

        for piece in _local_pieces(module):
            freeze(piece, self.cfg)
            if self.cfg.model.activation_checkpointing:
                apply_activation_checkpointing(piece)
        return deepspeed_initialize(module, self.groups, ds_config, model_parameters=params(module),
                                    lr_scheduler=lr_scheduler)

    def check_drift(self, engine, step: int) -> None:
        """Replicated parameters must be bit-identical across the TP group (the TP layers
        keep them so by construction; non-deterministic GPU kernels can break it). Collective
        over TP; raises naming the first parameter that differs."""
        if self.tp == 1:
            return
        from ofa_ds.engine.portable import local_modules
        from ofa_ds.parallel.plan import replicated_mismatch

        for module in local_modules(engine.module):
            bad = replicated_mismatch(module, self.groups.tp, "param")
            if bad:
                name, diff = next(iter(bad.items()))
                raise RuntimeError(f"step {step}: replicated parameter {name} differs across the {self.tp} TP ranks "
                                   f"(max |diff| {diff:.3e}; {len(bad)} parameters differ). The copies drifted "
                                   f"apart, e.g. through non-deterministic kernels: resume from the last checkpoint "
                                   f"with deterministic algorithms (torch.use_deterministic_algorithms)")

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


RESNET_PREFIX = "encoder.embed_images."


def freeze(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """``model.freeze_resnet``: no gradients for the ResNet, found by its single-device
    names, so it works on an ``OFAModel`` and on pipeline pieces alike."""
    if cfg.model.freeze_resnet:
        for name, p in model.named_parameters():
            if name.startswith(RESNET_PREFIX):
                p.requires_grad_(False)


def _running_statistics(bn, args) -> None:
    bn.training = False


def frozen_batchnorms(module: torch.nn.Module, cfg: TrainConfig) -> list:
    """Keep every BatchNorm on its running statistics while training (freeze options).
    A forward pre-hook, not ``eval()`` once: DeepSpeed's pipeline engine calls
    ``module.train()`` at the start of every ``train_batch``."""
    if not (cfg.model.freeze_resnet or cfg.model.freeze_batchnorm):
        return []
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.register_forward_pre_hook(_running_statistics)
    return bns


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
