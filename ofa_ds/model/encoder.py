"""OFA encoder: ResNet patches + text tokens, one transformer over both.

Shape legend: B batch, S text length, N image patches, L = N + S, d width, H heads.
The image part comes first in the sequence. Absolute positions never enter the hidden
states; they become a per-head attention bias (spec ofa_model.md §3.5) that every layer
shares, plus a per-layer relative-position bias for the text and image blocks.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds import kernels
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.layers import drop_path_rates, EncoderLayer, layer_norm, split_heads
from ofa_ds.model.position import image_bucket_table, image_position_ids, token_bucket_table
from ofa_ds.model.resnet import ResNetBackbone


def position_bias(q_linear: nn.Linear, k_linear: nn.Linear, q_pos, k_pos, head_dim: int,
                  scale: float) -> torch.Tensor:
    """[B|1, H, Tq, Tk] bias from (already layer-normed) position embeddings."""
    q = split_heads(q_linear(q_pos) * scale, head_dim)
    k = split_heads(k_linear(k_pos), head_dim)
    return torch.matmul(q, k.transpose(-1, -2))


class PositionalStack(nn.Module):
    """What encoder and decoder share: absolute position tables with their LayerNorms, and
    one text and one image relative-position table per layer (not shared between layers)."""

    def _init_common(self, cfg: OFAConfig, heads: int) -> None:
        self.cfg = cfg
        self.head_dim = cfg.embed_dim // heads
        self.pos_scaling = (self.head_dim * cfg.attn_scale_factor) ** -0.5
        self.embed_scale = cfg.embed_scale

    def _init_positions(self, cfg: OFAConfig) -> None:
        d = cfg.embed_dim
        self.embed_positions = nn.Embedding(cfg.max_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.num_image_positions, d)
        self.pos_ln = layer_norm(d)
        self.image_pos_ln = layer_norm(d)

    def _init_relative_tables(self, cfg: OFAConfig, heads: int, n_layers: int) -> None:
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(cfg.num_token_rel_buckets, heads) for _ in range(n_layers))
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(cfg.num_image_rel_buckets, heads) for _ in range(n_layers))
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size), persistent=False)


class OFAEncoder(PositionalStack):
    patch_generator: torch.Generator | None = None
    """Set by the trainer (``StepRNG``); not a parameter or buffer, so never saved."""

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, H = cfg.embed_dim, cfg.encoder_heads
        self._init_common(cfg, H)

        self.embed_tokens = embed_tokens
        self.layernorm_embedding = layer_norm(d) if cfg.layernorm_embedding else None
        self.type_embedding = nn.Embedding(2, d) if cfg.add_type_embedding else None
        self.embed_images = ResNetBackbone(cfg.resnet_layers, cfg.resnet_drop_path_rate)
        self.image_proj = nn.Linear(ResNetBackbone.out_channels, d)
        self.patch_layernorm_embedding = layer_norm(d) if cfg.patch_layernorm_embedding else None

        self._init_positions(cfg)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)

        rates = drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nn.ModuleList(EncoderLayer(cfg, rates[i]) for i in range(cfg.encoder_layers))
        self.layer_norm = layer_norm(d) if cfg.normalize_before else None
        self._init_relative_tables(cfg, H, cfg.encoder_layers)

    # -- pieces ------------------------------------------------------------------------
    def embed_patches(self, patch_images, patch_masks, sample_patch_num):
        """Returns patch features [B,N,d] (before the embedding LN), ids [B,N], padding [B,N]."""
        feats = self.embed_images(patch_images)  # [B, 1024, h, w]
        B, _, h, w = feats.shape
        patches = feats.flatten(2).transpose(1, 2)  # [B, h*w, 1024], row-major
        ids = image_position_ids(h, w, self.cfg.image_bucket_size).to(patches.device).expand(B, -1)
        if sample_patch_num is not None:
            # An independent random subset of patches per image, from ``patch_generator`` when
            # the trainer set one (seeded per step and rank, checkpointed), else torch's
            # global RNG (upstream uses Python's random).
            keep = torch.rand(B, h * w, device=patches.device,
                              generator=self.patch_generator).argsort(dim=1)[:, :sample_patch_num]
            patches = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
            ids = ids.gather(1, keep)
        padding = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if patch_masks is not None:
            padding = padding | ~patch_masks[:, None]
        return self.image_proj(patches), ids, padding

    def _embed(self, x, type_id: int, ln):
        x = self.embed_scale * x
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[type_id]
        if ln is not None:
            x = ln(x)
        return F.dropout(x, p=self.cfg.dropout, training=self.training)

    def layer_bias(self, i: int, abs_bias_BHLL, n_image: int, image_buckets_BNN):
        """Absolute bias plus layer i's relative bias on the image and text blocks."""
        S = abs_bias_BHLL.shape[-1] - n_image
        text_rel = kernels.relative_bias(self.token_rel_pos_table_list[i], self.token_rp_bucket[:S, :S])
        image_rel = kernels.relative_bias(self.image_rel_pos_table_list[i], image_buckets_BNN) if n_image else None
        return add_relative_bias(abs_bias_BHLL, text_rel, image_rel)

    # -- forward -----------------------------------------------------------------------
    def embed(self, src_tokens, patch_images=None, patch_masks=None, sample_patch_num=None,
              token_embeddings=None) -> dict:
        """Everything before the layers: ``x`` [B, L, d] (padded positions zeroed),
        ``padding`` [B, L], ``positions`` [B, L, d] (layer-normed, for the decoder),
        ``abs_bias`` [1|B, H, L, L] and ``image_buckets`` [1|B, N, N] (None without images;
        batch dim 1 when no patches were sampled).
        ``token_embeddings``: the looked-up ``embed_tokens(src_tokens)`` when the table lives
        elsewhere (pipeline stages)."""
        B, S = src_tokens.shape
        if token_embeddings is None:
            token_embeddings = self.embed_tokens(src_tokens)
        text = self._embed(token_embeddings, 0, self.layernorm_embedding)
        text_pad = src_tokens.eq(self.cfg.pad)
        text_pos = self.pos_ln(self.embed_positions.weight[:S]).expand(B, -1, -1)

        if patch_images is not None:
            patches, image_ids, image_pad = self.embed_patches(patch_images, patch_masks, sample_patch_num)
            image = self._embed(patches, 1, self.patch_layernorm_embedding)
            image_pos = self.image_pos_ln(self.embed_image_positions(image_ids))
            x = torch.cat([image, text], dim=1)
            padding = torch.cat([image_pad, text_pad], dim=1)
            positions = torch.cat([image_pos, text_pos], dim=1)
        else:
            x, padding, positions, image_ids = text, text_pad, text_pos, None

        # Padded positions (text pads, images of samples without one) are exactly zero.
        x = x * (1 - padding.unsqueeze(-1).type_as(x))
        # Positions do not depend on the sample unless patches were sampled: then the biases
        # are computed once, [1, H, L, L], and broadcast (B times less work and memory).
        shared = sample_patch_num is None
        pos = positions[:1] if shared else positions
        abs_bias = position_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, self.head_dim, self.pos_scaling)
        image_buckets = None
        if image_ids is not None:
            ids = image_ids[:1] if shared else image_ids
            image_buckets = self.image_rp_bucket[ids[:, :, None], ids[:, None, :]]
        return {"x": x, "padding": padding, "positions": positions, "abs_bias": abs_bias,
                "image_buckets": image_buckets}

    def forward(self, src_tokens, src_lengths=None, patch_images=None, patch_masks=None,
                sample_patch_num=None) -> dict:
        e = self.embed(src_tokens, patch_images, patch_masks, sample_patch_num)
        n_image = 0 if e["image_buckets"] is None else e["image_buckets"].shape[1]
        x = e["x"]
        for i, layer in enumerate(self.layers):
            x = layer(x, e["padding"], self.layer_bias(i, e["abs_bias"], n_image, e["image_buckets"]))
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {"encoder_out": x, "padding_mask": e["padding"], "position_embeddings": e["positions"]}


def add_relative_bias(abs_bias_BHLL, text_rel_SSH, image_rel_BNNH=None):
    """A layer's attention bias: the shared absolute bias plus its relative terms on the
    text block (last S rows and columns) and the image block (first N). Image<->text
    blocks get the absolute bias only."""
    S = text_rel_SSH.shape[0]
    bias = abs_bias_BHLL.clone()
    bias[:, :, -S:, -S:] += text_rel_SSH.permute(2, 0, 1)
    if image_rel_BNNH is not None:
        N = image_rel_BNNH.shape[1]
        bias[:, :, :N, :N] += image_rel_BNNH.permute(0, 3, 1, 2)
    return bias


def reorder_encoder_out(encoder_out: dict, new_order: torch.Tensor) -> dict:
    """Select/repeat batch rows (beam search)."""
    return {k: v.index_select(0, new_order) for k, v in encoder_out.items()}
