"""The training loop around ``deepspeed.initialize``; task-agnostic.

Build steps, in order: distributed start-up -> vocabulary -> model (fresh or
``init_from``) -> task and data -> DeepSpeed engine -> optional resume -> loop. The loop
runs ``grad_accum`` micro-batches per optimizer step; DeepSpeed does accumulation,
clipping, ZeRO and mixed precision from the generated JSON.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.config.load import to_dict, validate
from ofa_ds.config.schema import TrainConfig
from ofa_ds.engine import checkpoint as ckpt
from ofa_ds.engine import portable
from ofa_ds.engine.distributed import all_reduce_sum, init_distributed
from ofa_ds.engine.ds_config import OWNED_KEYS, build_ds_config, write_ds_config
from ofa_ds.engine.flops import measure_matmul_peak, training_step_flops
from ofa_ds.engine.grad_norm import GradNormTracker
from ofa_ds.engine.layout import Layout, freeze, frozen_batchnorms, pad_vocab
from ofa_ds.engine.schedule import build_scheduler
from ofa_ds.tasks import build_task
from ofa_ds.tasks.base import move_to
from ofa_ds.tasks.evaluation import BestKeeper

logger = logging.getLogger("ofa_ds.train")

MODEL_OVERRIDES = ("dropout", "attention_dropout", "encoder_drop_path_rate", "decoder_drop_path_rate",
                   "resnet_drop_path_rate")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, vocab_size: int, zero3_config: dict | None = None):
    """``zero3_config`` (the DeepSpeed JSON): build under ``deepspeed.zero.Init``, so each
    rank only ever holds its partition, and copy ``init_from`` weights in one parameter at a
    time (read on rank 0 only)."""
    from ofa_ds.model.ofa import OFAModel

    m = cfg.model
    overrides = {k: getattr(m, k) for k in MODEL_OVERRIDES}
    if cfg.task.name == "image_gen":  # the code grid of the generated images (OFA: 256 px, 32 x 32)
        overrides["code_image_size"] = cfg.data.code_image_size
    if zero3_config is not None:
        return _build_partitioned(cfg, vocab_size, zero3_config, overrides)
    if m.init_from:
        # Weights only: the optimizer, schedule and data position start fresh. The image
        # position table is interpolated when training at another resolution than the
        # checkpoint's (OFA-Huge went from 256 to 480 px this way).
        model = OFAModel.from_pretrained(m.init_from, config_overrides=overrides,
                                         patch_image_size=m.patch_image_size)
        if model.config.vocab_size != vocab_size:
            raise ValueError(f"{m.init_from} has a {model.config.vocab_size}-entry vocabulary but "
                             f"data.vocab_dir gives {vocab_size}; use the checkpoint's vocabulary")
        return model
    size = m.vocab_size or vocab_size
    if size != vocab_size:
        raise ValueError(f"model.vocab_size={size} differs from the vocabulary's {vocab_size}")
    return OFAModel(get_flavor(m.flavor, vocab_size=vocab_size, **overrides))


def speed_options(m):
    """The ``model.*`` speed switches as :class:`ofa_ds.kernels.wrap.SpeedOptions`."""
    from dataclasses import fields

    from ofa_ds.kernels.wrap import SpeedOptions

    return SpeedOptions(**{f.name: getattr(m, f.name) for f in fields(SpeedOptions)})


def _build_partitioned(cfg: TrainConfig, vocab_size: int, ds_config: dict, overrides: dict):
    import deepspeed
    import torch.distributed as dist

    from ofa_ds.model.checkpoint import check_keys, pretrained_state
    from ofa_ds.model.ofa import OFAModel

    m, state = cfg.model, None
    if m.init_from:
        if dist.get_rank() == 0:
            state, config = pretrained_state(m.init_from, config_overrides=overrides,
                                             patch_image_size=m.patch_image_size)
            config_dict = config.to_dict()
        else:
            config_dict = None
        shared = [config_dict]
        dist.broadcast_object_list(shared, src=0)
        from ofa_ds.model.config import OFAConfig

        config = OFAConfig.from_dict(shared[0])
        if config.vocab_size != vocab_size:
            raise ValueError(f"{m.init_from} has a {config.vocab_size}-entry vocabulary but "
                             f"data.vocab_dir gives {vocab_size}; use the checkpoint's vocabulary")
    else:
        config = get_flavor(m.flavor, vocab_size=vocab_size, **overrides)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = OFAModel(config, init_weights=not m.init_from)
    if state is not None:
        check_keys(set(model.state_dict()), set(state), m.init_from)
    if m.init_from:
        with torch.no_grad():
            for name, p in model.named_parameters():
                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    if state is not None:
                        p.copy_(state.pop(name))
            buffers = dict(model.named_buffers())  # not partitioned: small, sent once
            shared = [{k: state[k] for k in buffers if k in state} if state is not None else None]
            dist.broadcast_object_list(shared, src=0)
            for name, value in shared[0].items():
                buffers[name].copy_(value)
    return model


class Trainer:
    """Build steps run in this order; each is a method below."""

    def __init__(self, cfg: TrainConfig):
        from ofa_ds.data.vocab import Vocabulary
        from ofa_ds.kernels import set_attention_impl

        validate(cfg)  # a config built in code gets the same refusals as a loaded one, before any build
        self.cfg = cfg
        # A layout change on --resume is checked before any process group exists.
        self._resume_kind = portable.check_resume(cfg, int(os.environ.get("WORLD_SIZE", "1"))) \
            if cfg.train.resume else None
        self.rank, self.world_size = init_distributed()
        self.out_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        vocab_dir = Path(cfg.data.vocab_dir)
        self.vocab = Vocabulary.from_dir(vocab_dir if vocab_dir.is_absolute() else Path(cfg.data.root) / vocab_dir)
        set_attention_impl(cfg.model.attention_impl)  # "auto": the registry's per-device choice
        seed_everything(cfg.train.seed)
        self.layout = Layout(cfg, self.world_size, self.rank)

        # The task first: it checks its files and options before any model is built.
        self.task = build_task(cfg, self.vocab)
        model = self._build_model()
        if cfg.model.moe_layers:
            self.task.moe_aux_weight = cfg.model.moe_aux_weight / (cfg.train.grad_accum * self.world_size)
        self._build_engine(model)
        self.rng = self._step_rng()
        # Data is sharded over data-parallel ranks only: TP and PP ranks of one replica read the same.
        self.loader = self.task.build_train_loader(rank=self.layout.dp_rank, world_size=self.layout.dp_size,
                                                   seed=cfg.train.seed)
        self.step = 0
        self.best = BestKeeper(f"valid_{getattr(self.task, 'metric', 'loss')}")
        if cfg.train.resume:
            self._resume()
        if self.rank == 0:
            self._log_setup(model)

    def _build_model(self):
        """Fresh or ``init_from`` weights, vocab padded for TP, freezing, checkpointing, MoE."""
        m = self.cfg.model
        zero3 = None
        if self.cfg.train.zero_stage == 3 and not self.layout.parallel and not m.moe_layers:
            # TP models are built full-size and split first (parallel/engine_glue.zero_init).
            zero3 = build_ds_config(self.cfg, on_gpu=torch.cuda.is_available())
        model = build_model(self.cfg, len(self.vocab), zero3_config=zero3)
        model = pad_vocab(model, self.layout.model_vocab_size(len(self.vocab)))
        freeze(model, self.cfg)
        if m.activation_checkpointing:
            from ofa_ds.kernels.wrap import apply_activation_checkpointing

            apply_activation_checkpointing(model)
        if m.moe_layers:
            from ofa_ds.model.moe import apply_moe

            if self.layout.parallel:
                raise ValueError("model.moe_layers with parallel.tp/pp > 1 is not supported yet (the TP plan "
                                 "does not cover expert linears); use data parallelism with moe_ep_size")
            apply_moe(model, m.moe_layers, m.moe_num_experts, m.moe_top_k, m.moe_capacity_factor,
                      backend=m.moe_backend, ep_size=m.moe_ep_size)
        from ofa_ds.kernels.wrap import SpeedOptions, apply_speed_options

        if self.layout.pp > 1 and speed_options(m) != SpeedOptions():
            # The pipeline rebuilds the model as pieces (Layout.initialize); the switches are not
            # re-applied there yet, so refuse instead of dropping them silently.
            changed = [k for k, v in vars(speed_options(m)).items() if v != getattr(SpeedOptions(), k)]
            raise ValueError(f"model speed switches {changed} are not applied under parallel.pp > 1 yet; "
                             f"leave them at their defaults with pipeline parallelism")
        apply_speed_options(model, speed_options(m), "cuda" if torch.cuda.is_available() else "cpu")
        self.model_config = model.config
        if self.cfg.train.export_format == "hf":
            from ofa_ds.model.state_dict_adapter import hf_resnet_type

            hf_resnet_type(model.config)  # refuse now, not after training, a model OFA-HF cannot build
        return model

    def _build_engine(self, model) -> None:
        """DeepSpeed JSON -> layout validation and groups -> the engine for that layout."""
        cfg, o = self.cfg, self.cfg.optim
        ds_config = build_ds_config(cfg, on_gpu=torch.cuda.is_available(),
                                    pipeline_groups=len(self.task.group_weights),
                                    dp_size=self.world_size // (self.layout.tp * self.layout.pp))
        self.ds_config = ds_config
        self.layout.setup_groups(model.config, ds_config)
        self.task.cross_entropy = self.layout.cross_entropy()
        scheduler = lambda opt: build_scheduler(opt, total_steps=cfg.train.max_steps, warmup_ratio=o.warmup_ratio,
                                                peak_lr=o.lr, end_lr=o.end_lr)
        self.engine, _, _, self.scheduler = self.layout.initialize(model, ds_config, scheduler,
                                                                   pipeline_loss_fn=self._pipeline_loss)
        self.grad_norm = GradNormTracker(self.engine)
        self.dp_group = self.layout.groups.dp_group if self.layout.parallel else None
        # From the engine's module: under PP the model above was rebuilt as pipeline pieces.
        self.frozen_bn = frozen_batchnorms(self.engine.module, cfg)
        self.float_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)

    def _step_rng(self):
        """Per-step seeds for this (data-parallel rank, pipeline stage); see parallel/random.py."""
        from ofa_ds.parallel.random import StepRNG

        groups = self.layout.groups
        rng = StepRNG(self.cfg.train.seed, dp_rank=self.layout.dp_rank,
                      pp_rank=groups.pp_rank if groups is not None else 0, device=self.engine.device)
        encoder = getattr(self.engine.module, "encoder", None)
        if encoder is not None:  # the pipeline refuses patch sampling (Layout)
            encoder.patch_generator = rng.patch_generator
        return rng

    def _log_setup(self, model) -> None:
        t = self.cfg.train
        global_batch = t.micro_batch * t.grad_accum * self.layout.dp_size
        logger.info("global batch: %d = micro %d x accumulation %d x data-parallel %d (per-rank micro-batch "
                    "in %s rows); tp %d, pp %d", global_batch, t.micro_batch, t.grad_accum, self.layout.dp_size,
                    "vision-language" if self.cfg.task.name == "pretrain" else "task", self.layout.tp,
                    self.layout.pp)
        logger.info("model: %s, %s parameters; ZeRO stage %d; precision %s", self.cfg.model.flavor,
                    f"{sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters()):,}",
                    self.ds_config["zero_optimization"]["stage"], t.precision)
        written = write_ds_config(self.ds_config, self.out_dir)
        logger.info("DeepSpeed config: template %s; ofa-ds set %s from its config; resolved JSON in %s",
                    t.deepspeed_template, ", ".join(OWNED_KEYS), written)

    # -- state -----------------------------------------------------------------------
    def _resume(self) -> None:
        if self._resume_kind == "portable":
            return self._resume_across_layouts()
        ours = ckpt.load(self.engine, self.ckpt_dir, rank=self.rank, world_size=self.world_size,
                         trusted=self.cfg.train.trust_checkpoint_pickle)
        self.loader.load_state_dict(ours["data"])
        ckpt.set_rng_state(ours["rng"])
        if "step_rng" in ours:
            self.rng.load_state_dict(ours["step_rng"])
        self.step = ours["step"]
        self.best.best = ours.get("best")
        if self.rank == 0:
            logger.info("resumed from %s at step %d", ckpt.read_latest(self.ckpt_dir), self.step)

    def _resume_across_layouts(self) -> None:
        """From the layout-free copy: weights, Adam moments and step, LR schedule, data
        position (rank 0's; the loader maps it onto this layout's rows per step)."""
        tag = ckpt.read_latest(self.ckpt_dir)
        step_dir = self.ckpt_dir / tag
        meta = portable.load(self.engine, step_dir, layout=self.layout)
        self.scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr
        ours = ckpt.read_rank_state(step_dir / "ofa_rank0.pt")
        self.loader.load_state_dict(ours["data"])
        self.step = self.engine.global_steps = ours["step"]
        if self.rank == 0:
            logger.info("resumed from %s at step %d across layouts: written with %s", step_dir, self.step,
                        {k: meta[k] for k in ("tp", "pp", "dp", "zero_stage")})

    def save(self) -> str:
        ours = {"data": self.loader.state_dict(), "config": to_dict(self.cfg), "best": self.best.best,
                "step_rng": self.rng.state_dict()}
        extra = self._save_portable if self.cfg.train.layout_free_checkpoint else self._save_layout
        return ckpt.save(self.engine, self.ckpt_dir, self.step, ours, rank=self.rank,
                         keep_last=self.cfg.train.keep_last, write_extra=extra)

    def _save_portable(self, step_dir: Path) -> None:
        portable.save(self.engine, step_dir, layout=self.layout, step=self.step, valid_vocab_size=len(self.vocab),
                      model_config=self.model_config.replace(vocab_size=len(self.vocab)).to_dict(),
                      scheduler_state=self.scheduler.state_dict())

    def _save_layout(self, step_dir: Path) -> None:
        if self.rank == 0:  # so a resume in another layout is refused with the writer's layout named
            (step_dir / portable.LAYOUT_FILE).write_text(json.dumps({**self.layout.describe(), "portable": False}))

    def export(self, path, format: str = "ofa-ds"):
        """Write the trained model through the checkpoint converter (rank 0; collective)."""
        import deepspeed

        from ofa_ds.model.ofa import OFAModel

        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.train.zero_stage == 3):
            state = self.layout.full_state_dict(self.engine)
        if state is None:
            return None
        config = self.model_config.replace(vocab_size=len(self.vocab))
        model = OFAModel(config, init_weights=False)
        model.load_state_dict(state)
        return model.save_pretrained(path, format=format)

    # -- loop ------------------------------------------------------------------------
    def _batches(self):
        while True:  # one epoch per pass; the loader keeps its own position
            yield from self.loader

    def _train_mode(self) -> None:
        self.engine.train()
        for bn in self.frozen_bn:
            bn.eval()

    def train_step(self, batches) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches."""
        gas = self.cfg.train.grad_accum
        micro = [move_to(next(batches), self.engine.device, self.float_dtype) for _ in range(gas)]
        # After the loader: a new DataLoader iterator draws its base seed from the global RNG.
        self.rng.begin_step(self.step)
        if hasattr(self.task, "prepare_step"):  # targets sampled from the model first (SCST)
            micro = [self.task.prepare_step(self.engine.module, b) for b in micro]
        # Per-group token counts of the whole step, over every data-parallel rank.
        counts = np.sum([self.task.token_counts(b) for b in micro], axis=0).tolist()
        denominators = all_reduce_sum(counts, group=self.dp_group, device=self.engine.device)
        if self.layout.pp > 1:
            return self._pipeline_step(micro, denominators)
        # DeepSpeed divides the loss by gas and averages gradients over ranks; our loss is
        # already a share of the global mean, so undo both.
        scale = gas * self.engine.dp_world_size
        total, reports = 0.0, []
        for batch in micro:
            loss, report = self.task.training_forward(self.engine, batch, denominators=denominators,
                                                      update_num=self.step)
            self.engine.backward(loss * scale)
            self.engine.step()
            total += loss.item()
            reports.append(report)
        self._last_batch = micro[-1]
        self.step += 1
        stream_keys = sorted(k for k in reports[0] if k.endswith("_loss"))
        sums = [total] + [sum(r[k] for r in reports) for k in stream_keys]
        sums += [sum(r["ntokens"] for r in reports), sum(r["nsamples"] for r in reports)]
        sums = all_reduce_sum(sums, group=self.dp_group, device=self.engine.device)
        out = {"loss": sums[0], **dict(zip(stream_keys, sums[1:-2]))}
        out["ntokens"], out["nsamples"] = int(sums[-2]), int(sums[-1])
        return out

    def _pipeline_loss(self, logits, labels):
        """Last pipeline stage: the summed loss; ``labels``' conf carries the step's scale."""
        target, conf = labels[0], labels[1]
        masks = labels[2] if len(labels) > 2 else None
        return self.task.cross_entropy(logits, target, conf, options=self.task.loss_options,
                                       constraint_masks_BTV=masks, pad=self.vocab.pad, eos=self.vocab.eos,
                                       update_num=self.step).loss

    def _pipeline_step(self, micro, denominators) -> dict:
        """Each group of each micro-batch is one pipeline micro-batch. Folding weight_g *
        n_micro * dp / tokens_g into conf makes DeepSpeed's mean over micro-batches and ranks
        come out as the same global per-group token mean as the non-pipeline path."""
        from ofa_ds.parallel.pipeline import pipeline_batch

        groups = [g for b in micro for g in (b if isinstance(b, (tuple, list)) else [b])]
        per_batch = len(self.task.group_weights)
        scale = len(groups) * self.layout.dp_size
        items = []
        for i, g in enumerate(groups):
            j = i % per_batch
            inputs, labels = pipeline_batch({**g["net_input"], "target": g["target"], "conf": g["conf"],
                                             "constraint_masks": g.get("constraint_masks")}, self.float_dtype)
            factor = self.task.group_weights[j] * scale / max(denominators[j], 1)
            items.append((inputs, (labels[0], labels[1] * factor) + tuple(labels[2:])))
        loss = self.engine.train_batch(data_iter=iter(items))
        self._last_batch = micro[-1]
        self.step += 1
        samples = all_reduce_sum([sum(g["nsentences"] for g in groups)], group=self.dp_group,
                                 device=self.engine.device)[0]
        return {"loss": float(loss), "ntokens": int(sum(denominators)), "nsamples": int(samples)}

    def run(self, until_step: int | None = None) -> list[dict]:
        """Train to ``train.max_steps`` (or stop early at ``until_step``, as a kill would:
        the schedule still spans max_steps)."""
        from ofa_ds.engine.metrics import MetricsLogger

        t = self.cfg.train
        metrics = MetricsLogger(self.out_dir, enabled=self.rank == 0, tensorboard=t.tensorboard,
                                progress=t.progress_bar, total_steps=t.max_steps, initial_step=self.step,
                                wandb_project=t.wandb_project, run_config=to_dict(self.cfg))
        peak = measure_matmul_peak(self.engine.device, self.float_dtype or torch.float32)
        batches = self._batches()
        self._train_mode()
        history = []
        stop = t.max_steps if until_step is None else min(until_step, t.max_steps)
        while self.step < stop:
            t0 = time.perf_counter()
            out = self.train_step(batches)
            dt = time.perf_counter() - t0
            flops = training_step_flops(self.model_config, self.task.flops_inputs(self._last_batch))
            out.update(lr=self.scheduler.get_last_lr()[0], grad_norm=self._grad_norm(),
                       loss_scale=self._loss_scale(), step_time=dt,
                       samples_per_s=out["nsamples"] / dt, tokens_per_s=out["ntokens"] / dt,
                       mfu=flops["total"] * t.grad_accum / dt / peak)
            history.append({"step": self.step, **out})
            if t.drift_check_every and self.step % t.drift_check_every == 0:
                self.layout.check_drift(self.engine, self.step)
            metrics.log_step(self.step, out)
            if t.image_log_every and self.step % t.image_log_every == 1 % t.image_log_every:
                metrics.log_example(self.step, *self.task.example_for_logging(self._last_batch))
            if t.save_every and (self.step % t.save_every == 0 or self.step == t.max_steps):
                self.save()
            every = self.cfg.task.eval_every or t.save_every
            if every and (self.step % every == 0 or self.step == t.max_steps):
                evaluation = self.validate()
                if evaluation:
                    metrics.log_eval(self.step, evaluation)
                    self._train_mode()
        metrics.close()
        return history

    def validate(self) -> dict:
        """The task's valid-split metrics (the same code as ``ofa-ds evaluate``, sharded over the
        data-parallel ranks); exports the model to out_dir/best when the task's metric improved."""
        if not hasattr(self.task, "metric"):  # pretraining: no validation split
            return {}
        if self.layout.parallel:
            if not getattr(self, "_warned_parallel_eval", False):
                logger.warning("in-training evaluation needs the full model per rank; with tp/pp > 1 run "
                               "`ofa-ds evaluate` on the exported model instead")
                self._warned_parallel_eval = True
            return {}
        evaluation = self.task.evaluate(self.engine.module, device=self.engine.device, rank=self.layout.dp_rank,
                                        world_size=self.layout.dp_size, group=self.dp_group,
                                        out_path=self.out_dir / "eval" / f"step_{self.step:08d}_valid_"
                                        f"{getattr(self.task, 'predictions_name', 'predictions.jsonl')}")
        if evaluation and self.cfg.train.keep_best and self.best.improved(evaluation):
            self.export(self.out_dir / "best")
            if self.rank == 0:
                (self.out_dir / "best" / "best.json").write_text(json.dumps(
                    {"step": self.step, "metric": self.best.key, "value": self.best.best, **evaluation}, indent=2))
        return evaluation

    def _grad_norm(self) -> float:
        return self.grad_norm.value()

    def _loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "cur_scale", getattr(self.engine.optimizer, "loss_scale", 1.0)) or 1.0)


def dump_config(cfg: TrainConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str) + "\n")
