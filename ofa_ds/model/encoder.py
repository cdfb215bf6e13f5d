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


class OFAEncoder(nn.Module):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, H = cfg.embed_dim, cfg.encoder_heads
        self.cfg = cfg
        self.head_dim = d // H
        self.pos_scaling = (self.head_dim * cfg.attn_scale_factor) ** -0.5
        self.embed_scale = cfg.embed_scale

        self.embed_tokens = embed_tokens
        self.layernorm_embedding = layer_norm(d) if cfg.layernorm_embedding else None
        self.type_embedding = nn.Embedding(2, d) if cfg.add_type_embedding else None
        self.embed_images = ResNetBackbone(cfg.resnet_layers, cfg.resnet_drop_path_rate)
        self.image_proj = nn.Linear(ResNetBackbone.out_channels, d)
        self.patch_layernorm_embedding = layer_norm(d) if cfg.patch_layernorm_embedding else None

        self.embed_positions = nn.Embedding(cfg.max_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.num_image_positions, d)
        self.pos_ln = layer_norm(d)
        self.image_pos_ln = layer_norm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)

        rates = drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nn.ModuleList(EncoderLayer(cfg, rates[i]) for i in range(cfg.encoder_layers))
        self.layer_norm = layer_norm(d) if cfg.normalize_before else None
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(cfg.num_token_rel_buckets, H) for _ in range(cfg.encoder_layers))
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(cfg.num_image_rel_buckets, H) for _ in range(cfg.encoder_layers))
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size), persistent=False)

    # -- pieces ------------------------------------------------------------------------
    def embed_patches(self, patch_images, patch_masks, sample_patch_num):
        """Returns patch features [B,N,d] (before the embedding LN), ids [B,N], padding [B,N]."""
        feats = self.embed_images(patch_images)  # [B, 1024, h, w]
        B, _, h, w = feats.shape
        patches = feats.flatten(2).transpose(1, 2)  # [B, h*w, 1024], row-major
        ids = image_position_ids(h, w, self.cfg.image_bucket_size).to(patches.device).expand(B, -1)
        if sample_patch_num is not None:
            # An independent random subset of patches per image; torch's RNG (upstream uses
            # Python's random), so seeding torch makes it reproducible.
            keep = torch.rand(B, h * w, device=patches.device).argsort(dim=1)[:, :sample_patch_num]
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
        bias = abs_bias_BHLL.clone()
        text_rel = self.token_rel_pos_table_list[i](self.token_rp_bucket[:S, :S])  # [S, S, H]
        bias[:, :, n_image:, n_image:] += text_rel.permute(2, 0, 1)
        if n_image:
            image_rel = self.image_rel_pos_table_list[i](image_buckets_BNN)  # [B, N, N, H]
            bias[:, :, :n_image, :n_image] += image_rel.permute(0, 3, 1, 2)
        return bias

    # -- forward -----------------------------------------------------------------------
    def forward(self, src_tokens, src_lengths=None, patch_images=None, patch_masks=None,
                sample_patch_num=None) -> dict:
        B, S = src_tokens.shape
        text = self._embed(self.embed_tokens(src_tokens), 0, self.layernorm_embedding)
        text_pad = src_tokens.eq(self.cfg.pad)
        text_pos = self.pos_ln(self.embed_positions.weight[:S]).expand(B, -1, -1)

        if patch_images is not None:
            patches, image_ids, image_pad = self.embed_patches(patch_images, patch_masks, sample_patch_num)
            image = self._embed(patches, 1, self.patch_layernorm_embedding)
            image_pos = self.image_pos_ln(self.embed_image_positions(image_ids))
            x = torch.cat([image, text], dim=1)
            padding = torch.cat([image_pad, text_pad], dim=1)
            positions = torch.cat([image_pos, text_pos], dim=1)
            image_buckets = self.image_rp_bucket[image_ids[:, :, None], image_ids[:, None, :]]
            n_image = image_ids.shape[1]
        else:
            x, padding, positions, image_buckets, n_image = text, text_pad, text_pos, None, 0

        # Padded positions (text pads, images of samples without one) are exactly zero.
        x = x * (1 - padding.unsqueeze(-1).type_as(x))
        abs_bias = position_bias(self.pos_q_linear, self.pos_k_linear, positions, positions,
                                 self.head_dim, self.pos_scaling)
        for i, layer in enumerate(self.layers):
            x = layer(x, padding, self.layer_bias(i, abs_bias, n_image, image_buckets))
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {"encoder_out": x, "padding_mask": padding, "position_embeddings": positions}


def reorder_encoder_out(encoder_out: dict, new_order: torch.Tensor) -> dict:
    """Select/repeat batch rows (beam search)."""
    return {k: v.index_select(0, new_order) for k, v in encoder_out.items()}
