"""Typed configuration of the OFA network (architecture only; no training knobs).

Field names follow the fairseq arguments where one exists, so that reading a released
checkpoint's ``cfg['model']`` is a plain attribute copy. Defaults are the values that the
released pretrained checkpoints use (spec ofa_model.md §1.2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class OFAConfig:
    # --- sizes -------------------------------------------------------------------------
    embed_dim: int = 256
    """Model width d (fairseq encoder_embed_dim = decoder_embed_dim)."""
    ffn_dim: int = 1024
    """FFN inner width F."""
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_heads: int = 4
    decoder_heads: int = 4
    resnet_layers: tuple[int, int, int] = (3, 4, 6)
    """Bottleneck blocks in ResNet stages 1-3: (3,4,6)=resnet50, (3,4,23)=resnet101, (3,8,36)=resnet152."""
    vocab_size: int = 59457
    """Dictionary size incl. <mask>, 8192 <code_i> and 1000 <bin_i> symbols."""
    pad: int = 1
    bos: int = 0
    eos: int = 2

    # --- positions ---------------------------------------------------------------------
    max_positions: int = 1024
    """max_source_positions = max_target_positions; the tables have max_positions + 2 rows."""
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    """Image grid side of the virtual position grid (42 -> 1765 image position ids)."""
    code_image_size: int = 128
    """Side of the image whose VQ codes the decoder generates (128 -> 16x16 = 256 codes)."""
    attn_scale_factor: float = 2.0
    """Queries (and position queries) are scaled by (head_dim * attn_scale_factor) ** -0.5."""

    # --- structural flags (all True for the released checkpoints) ----------------------
    normalize_before: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    scale_resids: bool = False
    no_scale_embedding: bool = True
    disable_entangle: bool = True
    """False reproduces upstream's quirk of adding absolute positions to decoder token embeddings."""

    # --- regularisation (inactive in eval mode) ----------------------------------------
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0

    # --- data-side facts recorded with the model ---------------------------------------
    patch_image_size: int = 480
    """Image side the weights were trained at (informational; the model is resolution-agnostic)."""
    num_bins: int = 1000
    code_dict_size: int = 8192

    extra: dict = field(default_factory=dict)
    """Free-form metadata carried through save/load (e.g. the source checkpoint's arch name)."""

    def __post_init__(self) -> None:
        self.resnet_layers = tuple(self.resnet_layers)
        for heads in (self.encoder_heads, self.decoder_heads):
            if self.embed_dim % heads:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {heads} heads")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.encoder_heads

    @property
    def embed_scale(self) -> float:
        return 1.0 if self.no_scale_embedding else self.embed_dim**0.5

    @property
    def num_image_positions(self) -> int:
        return self.image_bucket_size**2 + 1

    @property
    def num_image_rel_buckets(self) -> int:
        return (2 * self.image_bucket_size - 1) ** 2 + 3

    @property
    def num_token_rel_buckets(self) -> int:
        return 2 * self.token_bucket_size - 1

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["resnet_layers"] = list(self.resnet_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "OFAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown OFAConfig fields: {unknown}")
        return cls(**data)

    def replace(self, **changes) -> "OFAConfig":
        return dataclasses.replace(self, **changes)
