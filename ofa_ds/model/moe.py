"""Optional mixture-of-experts FFN for chosen OFA layers.

Shape legend: B batch, T sequence, d width, F FFN width, E experts.

``apply_moe(model, "encoder:1,3;decoder:1", num_experts=8, top_k=1)`` replaces the FFN
(fc1 -> GELU -> ffn_layernorm -> fc2) of those layers with a router plus E copies of it.
The layer keeps its residual plumbing; only ``_ffn`` dispatches to ``layer.moe``. Every
expert starts as a copy of the layer's dense FFN ("sparse upcycling"), so a model
converted from a dense checkpoint starts from the dense function; the router breaks the
symmetry during training.

Backends:

* ``deepspeed`` (default): ``deepspeed.moe.layer.MoE`` (top-1/top-2 gating with capacity,
  GShard load-balancing loss). Experts are split over expert-parallel groups of
  ``ep_size`` ranks carved out of the data-parallel group; ``deepspeed.initialize`` builds
  those groups (``init_moe_groups`` does it without the engine). Runs on CPU. The engine
  must hand DeepSpeed param groups split by
  ``deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer`` (see
  ``moe_param_groups``) so expert gradients are reduced over the expert-data-parallel
  group only.
* ``megablocks``: dropless ``megablocks.layers.dmoe.dMoE``; imported only when chosen.
  CUDA only, and megablocks 0.10.0 pins torch 2.7.0, so it does not install next to our
  torch (spec parallelism.md §5). Its experts have no biases and no ffn_layernorm, so
  they are initialised by the library, not from the dense FFN.

The load-balancing loss of the last forward is kept on each MoE module;
``collect_moe_aux_loss(model)`` sums (and clears) them so the engine can add
``coef * aux`` to the task loss. Padding tokens are routed like any other token.
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds import kernels

BACKENDS = ("deepspeed", "megablocks")


class ExpertFFN(nn.Module):
    """OFA's FFN as a standalone module: fc1 -> gelu_fp32 -> dropout -> ffn_layernorm -> fc2."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, ffn_layernorm: nn.Module | None,
                 activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.ffn_layernorm = fc1, fc2, ffn_layernorm
        self.activation_dropout = activation_dropout

    @classmethod
    def from_dense(cls, layer: nn.Module) -> "ExpertFFN":
        """A copy of ``layer``'s dense FFN (weights included)."""
        return cls(copy.deepcopy(layer.fc1), copy.deepcopy(layer.fc2), copy.deepcopy(layer.ffn_layernorm),
                   layer.activation_dropout)

    def forward(self, x_NTd: torch.Tensor) -> torch.Tensor:
        y = kernels.bias_gelu(self.fc1(x_NTd))
        y = F.dropout(y, p=self.activation_dropout, training=self.training)
        if self.ffn_layernorm is not None:
            y = self.ffn_layernorm(y)
        return self.fc2(y)


class MoEFFN(nn.Module):
    """Drop-in for a layer's FFN: [B, T, d] -> [B, T, d]; ``aux_loss`` holds the last
    forward's load-balancing loss."""

    def __init__(self, inner: nn.Module, backend: str, megablocks_args=None):
        super().__init__()
        self.inner = inner
        self.backend = backend
        self._megablocks_args = megablocks_args
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x_BTd: torch.Tensor) -> torch.Tensor:
        if self.backend == "deepspeed":
            out, aux, _counts = self.inner(x_BTd)
            self.aux_loss = aux
            return out
        out = self.inner(x_BTd)
        return out[0] if isinstance(out, tuple) else out  # dMoE may return (out, bias)

    def extra_repr(self) -> str:
        return f"backend={self.backend}"


def parse_layer_spec(spec: str, n_encoder: int, n_decoder: int) -> dict[str, list[int]]:
    """``"encoder:1,3;decoder:all"`` -> {"encoder": [1, 3], "decoder": [0, ..., n-1]}."""
    sizes = {"encoder": n_encoder, "decoder": n_decoder}
    out: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        stack, _, idx = part.partition(":")
        stack = stack.strip()
        if stack not in sizes or not idx.strip():
            raise ValueError(f"bad MoE layer spec {part!r}; expected e.g. 'encoder:1,3;decoder:all'")
        n = sizes[stack]
        if idx.strip() == "all":
            chosen = list(range(n))
        else:
            chosen = [int(i) for i in idx.split(",")]
            bad = [i for i in chosen if not 0 <= i < n]
            if bad:
                raise ValueError(f"MoE layer spec {part!r}: {stack} has layers 0..{n - 1}, not {bad}")
        out[stack] = sorted(set(out.get(stack, []) + chosen))
    if not out:
        raise ValueError("empty MoE layer spec")
    return out


def _deepspeed_moe(layer, d, num_experts, top_k, capacity_factor, eval_capacity_factor,
                   min_capacity, drop_tokens, ep_size, ep_group):
    from deepspeed.moe.layer import MoE

    inner = MoE(d, ExpertFFN.from_dense(layer), num_experts=num_experts, ep_size=ep_size, k=top_k,
                capacity_factor=capacity_factor, eval_capacity_factor=eval_capacity_factor,
                min_capacity=min_capacity, drop_tokens=drop_tokens, use_rts=True)
    if ep_group is not None:
        inner.deepspeed_moe._set_ep_group(ep_group)
    return MoEFFN(inner, "deepspeed")


MEGABLOCKS_HELP = (
    "backend='megablocks' needs the megablocks package with its CUDA extension. megablocks 0.10.0 "
    "requires torch==2.7.0 (a CUDA build), stanford-stk 0.7.1 and triton, and compiles csrc/ops.cu "
    "with an nvcc matching that torch (CUDA 12.x; it fails against CUDA 13's CUB). It cannot be "
    "installed next to torch 2.14.1 and cannot run on CPU. Use backend='deepspeed'."
)


def _megablocks_moe(layer, d, ffn_dim, num_experts, top_k, capacity_factor, ep_group):
    if not torch.cuda.is_available():
        raise RuntimeError("backend='megablocks' runs on CUDA only. " + MEGABLOCKS_HELP)
    try:
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import dMoE
    except ImportError as err:
        raise ImportError(f"{MEGABLOCKS_HELP} (import failed: {err})") from err
    args = Arguments(
        hidden_size=d, ffn_hidden_size=ffn_dim, moe_num_experts=num_experts, moe_top_k=top_k,
        moe_capacity_factor=capacity_factor, activation_fn=functools.partial(F.gelu, approximate="none"),
        moe_expert_model_parallelism=ep_group is not None, expert_parallel_group=ep_group,
        return_bias=False, device=torch.cuda.current_device())
    return MoEFFN(dMoE(args), "megablocks", megablocks_args=args)


def apply_moe(model: nn.Module, layers: str, num_experts: int, top_k: int = 1,
              capacity_factor: float = 1.0, backend: str = "deepspeed", ep_group=None, *,
              ep_size: int | None = None, eval_capacity_factor: float | None = None,
              min_capacity: int = 4, drop_tokens: bool = True) -> list[str]:
    """Replace the FFN of the chosen layers by an MoE; returns the names of replaced layers.

    ``ep_size``: experts are split over groups of that many data-parallel ranks (DeepSpeed
    creates the groups in ``deepspeed.initialize``). ``ep_group``: an explicit expert-parallel
    process group instead, for use without DeepSpeed's engine (``ep_size`` is its size).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown MoE backend {backend!r}; choose from {BACKENDS}")
    if top_k not in (1, 2) and backend == "deepspeed":
        raise ValueError("the deepspeed MoE backend supports top_k 1 or 2")
    if ep_group is not None:
        size = torch.distributed.get_world_size(ep_group)
        if ep_size not in (None, size):
            raise ValueError(f"ep_size={ep_size} but ep_group has {size} ranks")
        ep_size = size
    ep_size = ep_size or 1
    if num_experts % ep_size:
        raise ValueError(f"num_experts={num_experts} is not divisible by ep_size={ep_size}")
    cfg = model.config
    chosen = parse_layer_spec(layers, cfg.encoder_layers, cfg.decoder_layers)
    replaced = []
    for stack, indices in chosen.items():
        for i in indices:
            layer = getattr(model, stack).layers[i]
            if getattr(layer, "moe", None) is not None:
                raise ValueError(f"{stack}.layers.{i} already has an MoE FFN")
            if backend == "deepspeed":
                moe = _deepspeed_moe(layer, cfg.embed_dim, num_experts, top_k, capacity_factor,
                                     eval_capacity_factor or capacity_factor, min_capacity,
                                     drop_tokens, ep_size, ep_group)
            else:
                moe = _megablocks_moe(layer, cfg.embed_dim, cfg.ffn_dim, num_experts, top_k,
                                      capacity_factor, ep_group)
            del layer.fc1, layer.fc2
            layer.ffn_layernorm = None
            layer.moe = moe
            replaced.append(f"{stack}.layers.{i}")
    return replaced


def moe_modules(model: nn.Module) -> list[MoEFFN]:
    return [m for m in model.modules() if isinstance(m, MoEFFN)]


def init_moe_groups(model: nn.Module) -> None:
    """Create DeepSpeed's expert(-data)-parallel groups without ``deepspeed.initialize``
    (which does the same). Needs ``deepspeed.init_distributed()`` first."""
    from deepspeed.moe.layer import MoE

    for module in model.modules():
        if isinstance(module, MoE) and module.deepspeed_moe.ep_group is None:
            module.set_deepspeed_parallelism()


def collect_moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the load-balancing losses of the last forward (None without MoE layers).

    Clears them, so a forward that skipped a layer cannot add a stale value later.
    """
    modules = moe_modules(model)
    if not modules:
        return None
    total = None
    for m in modules:
        if m.backend == "megablocks":
            continue
        if m.aux_loss is None:
            raise RuntimeError("an MoE layer has no aux loss: call collect_moe_aux_loss once per forward")
        total = m.aux_loss if total is None else total + m.aux_loss
        m.aux_loss = None
    mb = [m for m in modules if m.backend == "megablocks"]
    if mb:
        from megablocks.layers.moe import batched_load_balancing_loss, clear_load_balancing_loss

        mb_loss = batched_load_balancing_loss(mb[0]._megablocks_args)
        clear_load_balancing_loss()
        total = mb_loss if total is None else total + mb_loss
    return total


def moe_param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer param groups with experts split out, as DeepSpeed's MoE engine needs."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    group = {"params": [p for p in model.parameters() if p.requires_grad], "name": "ofa",
             "weight_decay": weight_decay}
    return split_params_into_different_moe_groups_for_optimizer(group)
