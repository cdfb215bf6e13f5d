"""Process groups for DP x TP x PP, built once from validated dims and passed explicitly.

The rank grid is DeepSpeed's ``PipeModelDataParallelTopology``: axes ``pipe, data, model``
in row-major order, so TP ranks are consecutive (innermost), then DP, then PP (outermost).
Building every group from ``topology.get_axis_comm_lists`` keeps our TP/DP groups identical
to the ones DeepSpeed's pipeline grid builds from the same topology.

``build_groups(dims)`` returns a ``ParallelGroups``; its ``mpu`` attribute is the object
DeepSpeed wants as ``deepspeed.initialize(mpu=...)`` / ``zero.Init(mpu=...)`` (pp == 1
only: with a ``PipelineModule`` the engine uses the module's own grid). Nothing here is a
global: model and parallel code receive the groups (or ``groups.tp``) as arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch.distributed as dist

from ofa_ds.parallel.dims import ParallelDims


class TPContext(NamedTuple):
    """What a tensor-parallel layer needs: its rank, the degree, and the group to talk on.

    ``group=None`` with ``size=1`` is the single-process case (every collective is skipped);
    tests also build ``TPContext(None, r, n)`` to shard weights without any communication.
    """

    group: Any
    rank: int
    size: int


SINGLE = TPContext(None, 0, 1)


def _new_groups(comm_lists: list[list[int]], rank: int):
    """Create one group per rank list (collective: every rank calls in the same order);
    return (our group, our rank list)."""
    mine, mine_ranks = None, None
    for ranks in comm_lists:
        group = dist.new_group(ranks=ranks)
        if rank in ranks:
            mine, mine_ranks = group, list(ranks)
    assert mine is not None, f"rank {rank} is in no group of {comm_lists}"
    return mine, mine_ranks


@dataclass
class ParallelGroups:
    dims: ParallelDims
    topology: Any  # deepspeed.runtime.pipe.topology.PipeModelDataParallelTopology
    rank: int
    tp_group: Any
    tp_ranks: list[int]
    dp_group: Any
    dp_ranks: list[int]
    pp_group: Any
    pp_ranks: list[int]
    mp_group: Any
    """DeepSpeed's "model parallel" group: every rank holding a different piece of one model
    replica (TP x PP ranks with the same DP coordinate); grad-norm reductions run over it."""
    mp_ranks: list[int]

    @property
    def coord(self):
        return self.topology.get_coord(self.rank)

    @property
    def tp_rank(self) -> int:
        return self.coord.model

    @property
    def dp_rank(self) -> int:
        return self.coord.data

    @property
    def pp_rank(self) -> int:
        return self.coord.pipe

    @property
    def tp(self) -> TPContext:
        return TPContext(self.tp_group, self.tp_rank, self.dims.tp)

    @property
    def mpu(self) -> "DeepSpeedMPU":
        return DeepSpeedMPU(self)


def build_groups(dims: ParallelDims) -> ParallelGroups:
    """Create all process groups for ``dims`` (validated; collective over the world)."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    if not dist.is_initialized():
        raise RuntimeError("build_groups needs an initialized default process group "
                           "(deepspeed.init_distributed() or torch.distributed.init_process_group())")
    world, rank = dist.get_world_size(), dist.get_rank()
    if -1 in (dims.dp, dims.tp, dims.pp) or dims.world_size != world:
        raise ValueError(f"dims {dims} are not validated for world size {world}; call dims.validate() first")
    topo = PipeModelDataParallelTopology(num_pp=dims.pp, num_mp=dims.tp, num_dp=dims.dp)
    tp_group, tp_ranks = _new_groups(topo.get_axis_comm_lists("model"), rank)
    dp_group, dp_ranks = _new_groups(topo.get_axis_comm_lists("data"), rank)
    pp_group, pp_ranks = _new_groups(topo.get_axis_comm_lists("pipe"), rank)
    if dims.pp == 1:
        mp_group, mp_ranks = tp_group, tp_ranks
    else:
        mp_lists = [sorted(topo.filter_match(data=d)) for d in range(dims.dp)]
        mp_group, mp_ranks = _new_groups(mp_lists, rank)
    return ParallelGroups(dims, topo, rank, tp_group, tp_ranks, dp_group, dp_ranks, pp_group, pp_ranks,
                          mp_group, mp_ranks)


class DeepSpeedMPU:
    """The ``mpu`` interface that DeepSpeed 0.19.8 queries (engine, ZeRO 1-3, grad clipping,
    checkpoint naming, ``utils/bwc.py``), answered from ``ParallelGroups``.

    Deliberately absent: ``initialize_sequence_parallel`` and ``get_sequence_parallel_*``
    (their presence switches DeepSpeed to its Ulysses code path), ``_init_tp_mesh_device``
    (AutoTP only).
    """

    def __init__(self, groups: ParallelGroups):
        self._g = groups

    # model parallel = every split of one replica (TP x PP)
    def get_model_parallel_rank(self) -> int:
        return self._g.mp_ranks.index(self._g.rank)

    def get_model_parallel_world_size(self) -> int:
        return len(self._g.mp_ranks)

    def get_model_parallel_group(self):
        return self._g.mp_group

    # tensor (slice) parallel
    def get_tensor_model_parallel_rank(self) -> int:
        return self._g.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._g.dims.tp

    def get_tensor_model_parallel_group(self):
        return self._g.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._g.tp_ranks[0]

    # data parallel
    def get_data_parallel_rank(self) -> int:
        return self._g.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self._g.dims.dp

    def get_data_parallel_group(self):
        return self._g.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._g.dp_ranks)

    # pipeline
    def get_pipeline_model_parallel_rank(self) -> int:
        return self._g.pp_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self._g.dims.pp

    def get_pipeline_model_parallel_group(self):
        return self._g.pp_group

    get_pipe_parallel_rank = get_pipeline_model_parallel_rank
    get_pipe_parallel_world_size = get_pipeline_model_parallel_world_size
    get_pipe_parallel_group = get_pipeline_model_parallel_group
