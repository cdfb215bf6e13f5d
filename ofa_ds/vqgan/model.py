"""VQ-GAN image tokenizer: images ↔ grids of codebook ids (the codes OFA's image streams predict).

::

    from ofa_ds.vqgan import VQGAN
    vq = VQGAN.from_checkpoint("vqgan_gumbel_f8_8192.ckpt")   # flavor inferred from the keys
    codes = vq.encode(images)          # [B, 3, 256, 256] in [0, 1] -> [B, 32, 32] long in [0, 8192)
    images = vq.decode(codes)          # [B, 32, 32] -> [B, 3, 256, 256] in [0, 1]

Flavors (``FLAVORS``): ``gumbel_f8`` is the model OFA used for its codes (taming-transformers
``vqgan_gumbel_f8_8192``: 8192 codes, f = 8, so 256 px → 32×32 and the 128 px image-infilling
centre → 16×16 = 256 codes); ``f16`` is the plain-quantiser ImageNet model (f = 16, 1024 or
16384 codes). ``tiny`` is a small random-weight flavor for tests.

Checkpoints: the published Lightning ``.ckpt`` (its ``state_dict`` holds the original key names)
or a bare state dict (``.pt``/``.safetensors``). Training-only entries (``loss.*``, the
discriminator and LPIPS weights) are ignored; any other missing or unexpected key is an error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ofa_ds.vqgan.modules import Decoder, Encoder
from ofa_ds.vqgan.quantize import GumbelQuantizer, VectorQuantizer


@dataclass(frozen=True)
class VQGANConfig:
    quantizer: str                 # "gumbel" | "vq"
    n_embed: int
    embed_dim: int = 256
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256          # only decides at which levels attention sits
    in_channels: int = 3
    out_ch: int = 3

    @property
    def factor(self) -> int:
        """Downsampling factor f: an H×W image gives (H/f)×(W/f) codes."""
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self) -> None:
        if self.quantizer not in ("gumbel", "vq"):
            raise ValueError(f"quantizer must be 'gumbel' or 'vq', got {self.quantizer!r}")
        if any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"every ch * ch_mult must be a multiple of 32 (GroupNorm groups), "
                             f"got ch={self.ch}, ch_mult={self.ch_mult}")


FLAVORS: dict[str, VQGANConfig] = {
    # taming-transformers configs/... vqgan_gumbel_f8: the model OFA's codes come from.
    "gumbel_f8": VQGANConfig("gumbel", n_embed=8192, ch_mult=(1, 1, 2, 4), attn_resolutions=(32,)),
    # vqgan_imagenet_f16_16384 (the f16_1024 model differs only in n_embed: pass n_embed=1024).
    "f16": VQGANConfig("vq", n_embed=16384, ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,)),
    # Tests and smoke runs: same structure (f = 8, attention at 1/8), a few MB.
    "tiny": VQGANConfig("gumbel", n_embed=8192, embed_dim=32, z_channels=32, ch=32,
                        ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(32,)),
}

_TRAINING_ONLY = ("loss.",)


class VQGAN(nn.Module):
    """Encoder → quant_conv → codebook; codebook → post_quant_conv → decoder (upstream's names)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        config.validate()
        self.config = config
        arch = dict(ch=config.ch, ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks,
                    attn_resolutions=config.attn_resolutions, resolution=config.resolution,
                    z_channels=config.z_channels)
        self.encoder = Encoder(in_channels=config.in_channels, **arch)
        self.decoder = Decoder(out_ch=config.out_ch, **arch)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantizer(config.embed_dim, config.n_embed, config.embed_dim)
        else:
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.eval()

    @classmethod
    def from_flavor(cls, name: str, **overrides) -> "VQGAN":
        if name not in FLAVORS:
            raise ValueError(f"unknown VQ-GAN flavor {name!r}; known: {sorted(FLAVORS)}")
        return cls(replace(FLAVORS[name], **overrides))

    # --------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path, flavor: str | None = None, *, trust_pickle: bool = False,
                        map_location="cpu", **overrides) -> "VQGAN":
        """Load a taming-transformers checkpoint. ``flavor`` defaults to the one the keys imply
        (``quantize.embed`` → gumbel_f8, ``quantize.embedding`` → f16); ``n_embed`` and
        ``embed_dim`` are read from the codebook's shape."""
        state = load_state_dict(path, trust_pickle=trust_pickle, map_location=map_location)
        if flavor is None:
            flavor = "gumbel_f8" if "quantize.embed.weight" in state else "f16"
        book = state.get("quantize.embed.weight", state.get("quantize.embedding.weight"))
        if book is None:
            raise ValueError(f"{path}: no codebook (quantize.embed.weight or quantize.embedding.weight); "
                             "is this a taming-transformers VQ-GAN checkpoint?")
        overrides = {"n_embed": book.shape[0], "embed_dim": book.shape[1], **overrides}
        model = cls.from_flavor(flavor, **overrides)
        model.load_weights(state, source=str(path))
        return model

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)}
        ours = self.state_dict()
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
                 for k in ours if k in state and state[k].shape != ours[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{source} does not fit VQ-GAN {self.config}:\n"
                             f"  missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}\n"
                             f"  unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}\n"
                             f"  wrong shape: {wrong[:8]}")
        self.load_state_dict(state)

    # ------------------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] with values in [0, 1] (H, W multiples of f) → codes [B, H/f, W/f]
        (long, in [0, n_embed)). Deterministic; runs on the model's device and dtype."""
        f = self.config.factor
        if images_BCHW.dim() != 4 or images_BCHW.shape[-1] % f or images_BCHW.shape[-2] % f:
            raise ValueError(f"encode needs [B, C, H, W] with H, W multiples of {f}, got {tuple(images_BCHW.shape)}")
        p = next(self.parameters())
        x = images_BCHW.to(device=p.device, dtype=p.dtype) * 2 - 1  # the VQ-GAN was trained on [-1, 1]
        return self.quantize.codes(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def decode(self, codes_BHW: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] (or [B, h·w] for a square grid, OFA's flat layout) → images
        [B, 3, h·f, w·f] with values in [0, 1]."""
        codes = torch.as_tensor(codes_BHW)
        if codes.dim() == 2:
            side = int(round(codes.shape[1] ** 0.5))
            if side * side != codes.shape[1]:
                raise ValueError(f"flat codes need a square count, got {codes.shape[1]}")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.min() < 0 or codes.max() >= self.config.n_embed:
            raise ValueError(f"codes must lie in [0, {self.config.n_embed})")
        p = next(self.parameters())
        z = self.post_quant_conv(self.quantize.lookup(codes.to(p.device).long()).to(p.dtype))
        return ((self.decoder(z).clamp(-1, 1) + 1) / 2).float()

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"VQGAN({asdict(self.config)}, {n / 1e6:.1f}M parameters)"


def load_state_dict(path, *, trust_pickle: bool = False, map_location="cpu") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: ``state_dict`` of a Lightning ``.ckpt``, or a bare dict.

    Pickled files load with ``weights_only=True`` first; Lightning checkpoints that also pickle
    arbitrary objects need ``trust_pickle=True`` (only for files from a source you trust)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"VQ-GAN checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device=str(map_location))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except Exception as e:  # torch raises UnpicklingError or others for non-tensor globals
        if trust_pickle:
            raise
        raise ValueError(f"{path} holds more than tensors and cannot be loaded safely ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); pass trust_pickle=True (--trust-checkpoint) "
                         "if you trust its source") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors or a checkpoint with 'state_dict'")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
