"""Parallelism for OFA: the only package that knows about ranks and process groups.

Entry points for the training engine (in call order)::

    dims = ParallelDims(dp=-1, tp=2, pp=1, zero_stage=3, offload=False,
                        precision="bf16").validate(world_size, cfg, ds_config)
        # -> the same object, -1 degree inferred; ValueError naming the fix otherwise.
        #    Runs before any process group exists.

    groups = build_groups(dims)            # collective; needs an initialised default group
        # -> ParallelGroups: .tp (TPContext), .tp_group/.dp_group/.pp_group/.mp_group,
        #    .topology (DeepSpeed PipeModelDataParallelTopology), .mpu (for DeepSpeed)

    # pp == 1 (DP x TP, ZeRO 0-3):
    with zero_init(groups, ds_config):     # ZeRO-3 only; a no-op context otherwise
        model = OFAModel(cfg)              # (or load weights here, before the plan)
    apply_tensor_parallel(model, groups)   # -> [(fqn, rule)]; in place, copies shards
    engine, *_ = deepspeed_initialize(model, groups, ds_config, model_parameters=...)
        # checks the traps below, then deepspeed.initialize(..., mpu=groups.mpu)
    logits_local, extra = engine(**batch)  # [B, T, V/tp]
    loss = vocab_parallel_label_smoothed_cross_entropy(logits_local, target, conf, tp=groups.tp, ...)

    # pp > 1 (PP x TP x DP, ZeRO 0/1):
    module = build_pipeline_module(cfg, dims, groups, loss_fn, state_dict=None)
        # -> OFAPipelineModule (a deepspeed PipelineModule); loss_fn(logits_local, labels)
        #    e.g. make_pipeline_loss_fn(groups.tp, options); batches from pipeline_batch()
    engine, *_ = deepspeed_initialize(module, groups, ds_config, model_parameters=...)
    loss = engine.train_batch(data_iter)

Checkpoints across layouts: ``gather_tensor_parallel_state_dict(model, groups)`` (TP ->
single-device state dict), ``shard_state_dict`` / ``merge_state_dicts`` (offline),
``load_single_state_dict(pipeline_module, state_dict)``.

See README.md in this folder for the regimes and recipes.
"""
from ofa_ds.parallel.dims import ParallelDims, padded_vocab_size
from ofa_ds.parallel.groups import ParallelGroups, TPContext, build_groups
from ofa_ds.parallel.plan import (apply_tensor_parallel, gather_tensor_parallel_state_dict, merge_state_dicts,
                                  shard_state_dict)

__all__ = [
    "ParallelDims", "padded_vocab_size", "ParallelGroups", "TPContext", "build_groups",
    "apply_tensor_parallel", "gather_tensor_parallel_state_dict", "merge_state_dicts", "shard_state_dict",
    "build_pipeline_module", "make_pipeline_loss_fn", "load_single_state_dict",
    "deepspeed_initialize", "zero_init", "vocab_parallel_label_smoothed_cross_entropy",
]


def __getattr__(name):
    # Lazy: these import DeepSpeed (seconds), which dims/plan users should not pay for.
    if name in ("build_pipeline_module", "make_pipeline_loss_fn", "load_single_state_dict"):
        from ofa_ds.parallel import pipeline

        return getattr(pipeline, name)
    if name in ("deepspeed_initialize", "zero_init"):
        from ofa_ds.parallel import engine_glue

        return getattr(engine_glue, name)
    if name == "vocab_parallel_label_smoothed_cross_entropy":
        from ofa_ds.parallel.cross_entropy import vocab_parallel_label_smoothed_cross_entropy

        return vocab_parallel_label_smoothed_cross_entropy
    raise AttributeError(name)
