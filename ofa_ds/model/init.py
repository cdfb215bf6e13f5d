"""Parameter initialisation (only matters for weights that are not loaded).

BERT-style for the transformer, as upstream: Linear and Embedding ~ N(0, 0.02), biases 0,
padding rows 0, LayerNorm 1/0, head gains 1. The ResNet keeps Kaiming-normal convs and
BatchNorm 1/0.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ofa_ds.model.layers import OFAAttention


@torch.no_grad()
def init_ofa_weights(model: nn.Module, std: float = 0.02) -> None:
    modules = list(model.modules())
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, OFAAttention) and m.c_attn is not None:
            m.c_attn.fill_(1.0)
    # Embeddings last: the tied output projection shares the token table, whose padding
    # row must end up zero.
    for m in modules:
        if isinstance(m, nn.Embedding):
            m.weight.normal_(0.0, std)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
    for m in modules:
        if getattr(m, "w_resid", None) is not None:
            m.w_resid.fill_(1.0)
