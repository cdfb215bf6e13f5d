"""OFA decoder: causal transformer over text tokens or image codes, cross-attending to
the encoder.

Shape legend: B batch, T decoder length (the full prefix, also when decoding
incrementally), Tq query rows (T, or 1 with a cache), L encoder length, d width, H heads.

Each sample is either a text sample or an image-code sample (``code_masks``). Code
samples use the image position table, the image relative buckets and their own
embedding LayerNorm. When ``code_masks`` is given, both variants are computed for the
whole batch and selected per sample, so every rank runs the same modules whatever its
batch holds (ZeRO-3 hangs otherwise).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds import kernels
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.encoder import PositionalStack, position_bias
from ofa_ds.model.layers import drop_path_rates, DecoderLayer, layer_norm
from ofa_ds.model.position import code_position_index


def _per_sample(code_masks, text_value, code_value):
    """Pick the code variant for code samples; inputs broadcast over the batch axis."""
    if code_masks is None:
        return text_value
    shape = (-1,) + (1,) * (max(text_value.dim(), code_value.dim()) - 1)
    return torch.where(code_masks.view(shape), code_value, text_value)


class OFADecoder(PositionalStack):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, H = cfg.embed_dim, cfg.decoder_heads
        self._init_common(cfg, H)

        self.embed_tokens = embed_tokens
        self.layernorm_embedding = layer_norm(d) if cfg.layernorm_embedding else None
        self.code_layernorm_embedding = layer_norm(d) if cfg.code_layernorm_embedding else None
        self._init_positions(cfg)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)

        rates = drop_path_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
        self.layers = nn.ModuleList(DecoderLayer(cfg, rates[i]) for i in range(cfg.decoder_layers))
        self.layer_norm = layer_norm(d) if cfg.normalize_before else None
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False)
        self.output_projection.weight = embed_tokens.weight  # tied
        self._init_relative_tables(cfg, H, cfg.decoder_layers)
        self.register_buffer(
            "image_position_idx",
            code_position_index(cfg.code_image_size, cfg.image_bucket_size), persistent=False)

    def _positions(self, T: int, code_masks):
        """Raw and layer-normed target position embeddings, [1|B, T, d] each."""
        text_raw = self.embed_positions.weight[:T][None]
        text = self.pos_ln(text_raw)
        if code_masks is None:
            return text_raw, text
        code_raw = self.embed_image_positions(self.image_position_idx[:T])[None]
        code = self.image_pos_ln(code_raw)
        return _per_sample(code_masks, text_raw, code_raw), _per_sample(code_masks, text, code)

    def _self_rel_bias(self, j: int, T: int, code_masks):
        """Layer j's relative bias for the decoder self-attention: [1|B, H, T, T]."""
        n = self.token_rp_bucket.shape[0]
        if T <= n:
            text_buckets = self.token_rp_bucket[:T, :T]
        else:
            # Only image-code sequences (1024 codes + BOS) outgrow the 1024-row text table; the
            # text variant is computed for them but never selected, so clamping is harmless.
            t = torch.arange(T, device=self.token_rp_bucket.device).clamp(max=n - 1)
            text_buckets = self.token_rp_bucket[t][:, t]
        text = kernels.relative_bias(self.token_rel_pos_table_list[j], text_buckets).permute(2, 0, 1)[None]
        if code_masks is None:
            return text
        idx = self.image_position_idx[:T]
        code = kernels.relative_bias(self.image_rel_pos_table_list[j],
                                     self.image_rp_bucket[idx][:, idx]).permute(2, 0, 1)[None]
        return _per_sample(code_masks, text, code)

    def _embed(self, token_embeddings_BTqd, pos_raw, code_masks):
        x = self.embed_scale * token_embeddings_BTqd
        if not self.cfg.disable_entangle:  # upstream quirk, off for the released weights
            x = x + pos_raw[:, -x.shape[1]:]
        if self.layernorm_embedding is not None:
            text = self.layernorm_embedding(x)
            code = self.code_layernorm_embedding(x) if self.code_layernorm_embedding is not None else text
            x = _per_sample(code_masks, text, code)
        return F.dropout(x, p=self.cfg.dropout, training=self.training)

    def prepare(self, prev_output_tokens, encoder_positions_BLd, code_masks=None, Tq: int | None = None,
                token_embeddings=None):
        """Everything before the layers, for the last ``Tq`` positions (all by default):
        the embedded input ``x`` [B, Tq, d], the absolute self-attention bias
        [1|B, H, Tq, T] and the cross-attention bias [B, H, Tq, L]. ``token_embeddings``:
        ``embed_tokens`` of those positions when the table lives elsewhere (pipeline)."""
        T = prev_output_tokens.shape[1]
        Tq = T if Tq is None else Tq
        pos_raw, pos = self._positions(T, code_masks)
        self_abs = position_bias(self.self_pos_q_linear, self.self_pos_k_linear, pos[:, -Tq:], pos,
                                 self.head_dim, self.pos_scaling)
        cross_bias = position_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, pos[:, -Tq:],
                                   encoder_positions_BLd, self.head_dim, self.pos_scaling)
        if token_embeddings is None:
            token_embeddings = self.embed_tokens(prev_output_tokens[:, -Tq:])
        return self._embed(token_embeddings, pos_raw, code_masks), self_abs, cross_bias

    def forward(self, prev_output_tokens, encoder_out: dict, code_masks=None,
                cache: list | None = None, project: bool = True):
        """Returns (logits [B, Tq, V] or None with ``project=False``, extra). With ``cache`` (a list, one dict per layer,
        filled on the first call) only the positions after the cached ones are computed (the
        first call with an empty cache computes all of them, e.g. a whole decoder prompt)."""
        T = prev_output_tokens.shape[1]
        Tq = T - cached_length(cache) if cache is not None else T
        x, self_abs, cross_bias = self.prepare(prev_output_tokens, encoder_out["position_embeddings"],
                                               code_masks, Tq)
        self_padding = prev_output_tokens.eq(self.cfg.pad)
        if cache is not None and not cache:
            cache.extend({} for _ in self.layers)
        for j, layer in enumerate(self.layers):
            self_bias = self_abs + self._self_rel_bias(j, T, code_masks)[:, :, -Tq:]
            x = layer(x, encoder_out["encoder_out"], encoder_out["padding_mask"], self_padding,
                      self_bias, cross_bias, cache[j] if cache is not None else None)
        features = x
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        # project=False: the caller scores only a few ids from "hidden" (all-candidate scoring).
        logits = self.output_projection(x) if project else None
        return logits, {"features": features, "hidden": x}


def cached_length(cache: list | None) -> int:
    """Decoder positions already held in ``cache`` (0 for an empty one)."""
    if not cache or "self" not in cache[0] or "k" not in cache[0]["self"]:
        return 0
    return cache[0]["self"]["k"].shape[2]


def reorder_cache(cache: list, new_order: torch.Tensor, *, cross: bool = True) -> None:
    """Select/repeat batch rows of every cached K/V in place (beam search). ``cross=False``
    leaves the cross-attention K/V alone: they depend only on the encoder output, so they need
    no reordering while rows stay within their sentence's beams."""
    for layer_cache in cache:
        for name, part in layer_cache.items():
            if name == "cross" and not cross:
                continue
            for key in ("k", "v"):
                if key in part:
                    part[key] = part[key].index_select(0, new_order)
