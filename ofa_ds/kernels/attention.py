"""Attention with OFA's additive bias.

Shape legend: B batch, H heads (local heads under tensor parallelism), Tq/Tk query/key
lengths, D head dim.

``reference_attention`` is the exact upstream order of operations: scores from the
pre-scaled queries, plus the summed position bias, plus the causal mask, padding filled
with -inf, softmax in float32 and cast back. ``sdpa_attention`` hands the same bias to
``torch.nn.functional.scaled_dot_product_attention`` as an additive mask so a fused
backend can run it. Which one the model uses is chosen in ``ofa_ds.kernels``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _additive_mask(bias_BHqk, key_padding_mask_Bk, causal, dtype, Tq, Tk, device):
    """One additive [B|1, H|1, Tq, Tk] tensor: bias + causal -inf + padding -inf."""
    mask = bias_BHqk
    if causal:
        # Queries are the last Tq positions of a Tk-long prefix (incremental decoding).
        q_pos = torch.arange(Tk - Tq, Tk, device=device)[:, None]
        k_pos = torch.arange(Tk, device=device)[None, :]
        causal_mask = torch.zeros(Tq, Tk, dtype=torch.float32, device=device)
        causal_mask = causal_mask.masked_fill(k_pos > q_pos, float("-inf")).to(dtype)
        mask = causal_mask if mask is None else mask + causal_mask
    if key_padding_mask_Bk is not None:
        pad = key_padding_mask_Bk[:, None, None, :]
        if mask is None:
            mask = torch.zeros(pad.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(pad, float("-inf"))
    return mask


def reference_attention(q_BHqD, k_BHkD, v_BHkD, bias_BHqk=None, key_padding_mask_Bk=None,
                        causal=False, dropout_p=0.0, training=False):
    """Queries must already be multiplied by the attention scale (as upstream does)."""
    Tq, Tk = q_BHqD.shape[-2], k_BHkD.shape[-2]
    scores = torch.matmul(q_BHqD, k_BHkD.transpose(-1, -2))
    if bias_BHqk is not None:
        scores = scores + bias_BHqk
    if causal:
        q_pos = torch.arange(Tk - Tq, Tk, device=scores.device)[:, None]
        k_pos = torch.arange(Tk, device=scores.device)[None, :]
        causal_mask = torch.zeros(Tq, Tk, dtype=torch.float32, device=scores.device)
        scores = scores + causal_mask.masked_fill(k_pos > q_pos, float("-inf")).to(scores.dtype)
    if key_padding_mask_Bk is not None:
        scores = scores.masked_fill(key_padding_mask_Bk[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    return torch.matmul(probs, v_BHkD)


def sdpa_attention(q_BHqD, k_BHkD, v_BHkD, bias_BHqk=None, key_padding_mask_Bk=None,
                   causal=False, dropout_p=0.0, training=False):
    """Same contract as ``reference_attention``, through the fused SDPA entry point."""
    Tq, Tk = q_BHqD.shape[-2], k_BHkD.shape[-2]
    mask = _additive_mask(bias_BHqk, key_padding_mask_Bk, causal, q_BHqD.dtype, Tq, Tk,
                          q_BHqD.device)
    # scale=1.0: the queries are pre-scaled, exactly like the reference path.
    return F.scaled_dot_product_attention(
        q_BHqD, k_BHkD, v_BHkD, attn_mask=mask, dropout_p=dropout_p if training else 0.0, scale=1.0
    )
