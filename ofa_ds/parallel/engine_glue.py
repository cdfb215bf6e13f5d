"""The few calls where our parallel layout meets ``deepspeed.initialize``, with the
start-up checks that turn DeepSpeed's silent failures into errors.

Traps (spec parallelism.md §2.3, §3.4, §7) and where each is stopped:

=================================================  =============================================
trap                                               handled by
=================================================  =============================================
TP model without ``mpu``: DeepSpeed broadcasts     ``check_mpu`` (in ``deepspeed_initialize``,
rank 0's shards over the TP group and averages     which always passes ``groups.mpu``)
gradients across it                                
``zero.Init`` without the DP group: partitions     ``zero_init`` passes it; ``check_zero3_partitioning``
over the world, wrong with TP                      refuses a wrong split after initialize;
                                                   ``apply_tensor_parallel`` refuses ZeRO-3 params
PP with ZeRO-2/3                                   ``ParallelDims.validate``
SP / TP with partitioned pipe activations          ``ParallelDims.validate`` (+ the DS config check)
tied embedding never saved                         ``pipeline.check_tied_specs``
pipeline shapes change without ``dynamic_shape``   ``build_pipeline_module`` (dynamic by default;
                                                   ``fixed_shapes=True`` refuses changes)
fp16 on CPU                                        ``ParallelDims.validate``
=================================================  =============================================
"""
from __future__ import annotations

import contextlib
import math

import torch.distributed as dist
import torch.nn as nn

from ofa_ds.parallel.groups import ParallelGroups
from ofa_ds.parallel.layers import is_sharded


def check_mpu(model: nn.Module, mpu) -> None:
    """Refuse a tensor-parallel model handed to DeepSpeed without (or with the wrong) mpu."""
    tp = getattr(model, "tp_context", None)
    if tp is None or tp.size == 1:
        return
    sharded = [n for n, p in model.named_parameters() if is_sharded(p)]
    if mpu is None:
        raise ValueError(
            f"the model is tensor-parallel (tp={tp.size}; e.g. {sharded[:2]}) but DeepSpeed gets no mpu: it "
            f"would broadcast rank 0's shards to every rank and average gradients across the TP group, "
            f"silently training a wrong model. Pass mpu=groups.mpu (ofa_ds.parallel.deepspeed_initialize does)")
    size = mpu.get_tensor_model_parallel_world_size()
    if size != tp.size:
        raise ValueError(f"mpu has tensor-parallel size {size} but the model was split for tp={tp.size}")


def check_zero3_partitioning(model: nn.Module, groups: ParallelGroups) -> None:
    """Every ZeRO-3 parameter must be partitioned over the DP group (not the world)."""
    dp = groups.dims.dp
    for name, p in model.named_parameters():
        if not hasattr(p, "ds_tensor"):
            continue
        local, full = p.ds_tensor.numel(), p.ds_numel
        if local != math.ceil(full / dp):
            ranks = max(1, round(full / max(local, 1)))
            raise ValueError(
                f"ZeRO-3 split {name} ({full} elements) into {local}-element parts, i.e. over ~{ranks} ranks, but "
                f"the data-parallel group has {dp}: the model was built under deepspeed.zero.Init without "
                f"data_parallel_group. Build it under ofa_ds.parallel.zero_init(groups, ds_config), or outside "
                f"zero.Init and let deepspeed_initialize partition it")


def zero_init(groups: ParallelGroups, ds_config: dict):
    """``deepspeed.zero.Init`` over the DP group (ZeRO-3), else a null context.

    Construct single-device models under it to skip materialising full weights per rank.
    A tensor-parallel model is built full-size (or on meta, then loaded) and split with
    ``apply_tensor_parallel`` *before* ``deepspeed_initialize``, which partitions the
    shards over the DP group; the plan refuses already-partitioned parameters.
    """
    stage = (ds_config.get("zero_optimization") or {}).get("stage", 0)
    if stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.Init(data_parallel_group=groups.dp_group, mpu=groups.mpu, config_dict_or_path=ds_config)


def deepspeed_initialize(model: nn.Module, groups: ParallelGroups, ds_config: dict, **kwargs):
    """``deepspeed.initialize`` with our layout: validates the config against the dims,
    passes ``mpu`` (None for a ``PipelineModule``, whose grid is the mpu), and checks ZeRO-3
    partitioning afterwards. Returns what ``deepspeed.initialize`` returns."""
    import deepspeed
    from deepspeed.runtime.pipe import PipelineModule

    dims = groups.dims
    dims.validate(dist.get_world_size(), None, ds_config=ds_config)
    is_pipe = isinstance(model, PipelineModule)
    if dims.pp > 1 and not is_pipe:
        raise ValueError(f"pp={dims.pp} needs a PipelineModule (ofa_ds.parallel.build_pipeline_module)")
    if is_pipe:
        topo = model.topology()
        if (topo.get_dim("pipe"), topo.get_dim("model"), topo.get_dim("data")) != (dims.pp, dims.tp, dims.dp):
            raise ValueError(f"the pipeline module's topology {topo} does not match the dims {dims}")
        mpu = None
    else:
        check_mpu(model, groups.mpu)
        mpu = groups.mpu
    result = deepspeed.initialize(model=model, config=ds_config, mpu=mpu, **kwargs)
    if dims.zero_stage == 3:
        check_zero3_partitioning(result[0].module, groups)
    return result
