"""Model sizes by name.

The five OFA sizes follow the upstream architecture presets (spec ofa_model.md §1.1);
``test`` is ours: small enough that a forward and backward pass takes well under a second
on CPU, but with every structural feature of the real sizes.
"""
from __future__ import annotations

from ofa_ds.model.config import OFAConfig

RESNET50, RESNET101, RESNET152 = (3, 4, 6), (3, 4, 23), (3, 8, 36)

FLAVORS: dict[str, dict] = {
    "test": dict(embed_dim=64, ffn_dim=128, encoder_layers=2, decoder_layers=2,
                 encoder_heads=4, decoder_heads=4, resnet_layers=(1, 1, 1)),
    "tiny": dict(embed_dim=256, ffn_dim=1024, encoder_layers=4, decoder_layers=4,
                 encoder_heads=4, decoder_heads=4, resnet_layers=RESNET50),
    "medium": dict(embed_dim=512, ffn_dim=2048, encoder_layers=4, decoder_layers=4,
                   encoder_heads=8, decoder_heads=8, resnet_layers=RESNET101),
    "base": dict(embed_dim=768, ffn_dim=3072, encoder_layers=6, decoder_layers=6,
                 encoder_heads=12, decoder_heads=12, resnet_layers=RESNET101),
    "large": dict(embed_dim=1024, ffn_dim=4096, encoder_layers=12, decoder_layers=12,
                  encoder_heads=16, decoder_heads=16, resnet_layers=RESNET152),
    "huge": dict(embed_dim=1280, ffn_dim=5120, encoder_layers=24, decoder_layers=12,
                 encoder_heads=16, decoder_heads=16, resnet_layers=RESNET152),
}

# Unique parameter counts (tied embedding counted once), from the released checkpoints' shapes.
EXPECTED_PARAMS = {
    "tiny": 33_488_336,
    "medium": 92_892_000,
    "base": 182_238_536,
    "large": 472_977_152,
    "huge": 929_486_848,
}


def flavor_names() -> list[str]:
    return list(FLAVORS)


def get_flavor(name: str, **overrides) -> OFAConfig:
    """Config for a named size; accepts both ``tiny`` and ``ofa_tiny``."""
    key = name.removeprefix("ofa_")
    if key not in FLAVORS:
        raise ValueError(f"unknown flavor {name!r}; choose from {flavor_names()}")
    return OFAConfig(**{**FLAVORS[key], **overrides})
