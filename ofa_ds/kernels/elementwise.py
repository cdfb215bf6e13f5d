"""Plain-PyTorch versions of the small fused ops (the parity references).

``bias_gelu``: exact (erf) GELU of ``x + bias`` evaluated in float32 and cast back, as
fairseq does for fp16/bf16 stability (spec ofa_model.md §6).

``bias_dropout_add``: ``residual + sample_scale * dropout(x + bias)``. ``sample_scale``
is the per-sample factor of drop path (0 or 1/keep for each sample), so a residual branch
with dropout *and* stochastic depth fits one fused kernel.

``bias`` is optional in both: the model's own linears add their bias themselves (calling
the module keeps ZeRO-3's parameter gathering and tensor-parallel wrappers intact), while
layers that return an unadded bias (Megatron's ``skip_bias_add``) can fuse it here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU on a float32 copy, cast back to the input dtype."""
    return F.gelu(x.float()).type_as(x)


def bias_gelu_eager(x_BTF: torch.Tensor, bias_F: torch.Tensor | None = None) -> torch.Tensor:
    return gelu_fp32(x_BTF if bias_F is None else x_BTF + bias_F)


def drop_path_scale(p: float, training: bool, x: torch.Tensor) -> torch.Tensor | None:
    """Per-sample factors of stochastic depth ([B], 0 or 1/keep), or None when inactive."""
    if p == 0.0 or not training:
        return None
    keep = 1.0 - p
    mask = torch.rand(x.shape[0], dtype=torch.float32, device=x.device)
    return (mask + keep).floor_().div_(keep)


def bias_dropout_add_eager(x_BTd: torch.Tensor, bias_d: torch.Tensor | None, residual_BTd: torch.Tensor,
                           p: float, training: bool, sample_scale_B: torch.Tensor | None = None):
    y = x_BTd if bias_d is None else x_BTd + bias_d
    y = F.dropout(y, p=p, training=training)
    if sample_scale_B is not None:
        y = y * sample_scale_B.view((-1,) + (1,) * (y.dim() - 1)).to(y.dtype)
    return residual_BTd + y
