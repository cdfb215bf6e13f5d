"""The OFA model: encoder + decoder sharing one token embedding.

The forward takes OFA's argument names and returns ``(logits, extra)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ofa_ds.model.config import OFAConfig
from ofa_ds.model.decoder import OFADecoder
from ofa_ds.model.encoder import OFAEncoder
from ofa_ds.model.init import init_ofa_weights


class OFAModel(nn.Module):
    def __init__(self, config: OFAConfig, *, init_weights: bool = True):
        super().__init__()
        self.config = config
        embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad)
        self.encoder = OFAEncoder(config, embed_tokens)
        self.decoder = OFADecoder(config, embed_tokens)
        if init_weights and not any(p.is_meta for p in self.parameters()):
            params = list(self.parameters())
            if any(hasattr(p, "ds_id") for p in params):
                # Built under deepspeed.zero.Init: the parameters are already partitioned,
                # so gather them (one rank initialises, the others receive the values).
                import deepspeed

                with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                    init_ofa_weights(self)
            else:
                init_ofa_weights(self)

    def forward(self, src_tokens, src_lengths=None, prev_output_tokens=None, patch_images=None,
                patch_masks=None, code_masks=None, sample_patch_num=None, decoder_rows_per_input: int = 1,
                **unused):
        """``decoder_rows_per_input`` = k: ``prev_output_tokens`` has k rows per input (input-major,
        e.g. SCST's sampled captions); each input is encoded once and its output repeated."""
        if prev_output_tokens is None:
            raise ValueError("prev_output_tokens is required")
        encoder_out = self.encoder(src_tokens, src_lengths, patch_images=patch_images,
                                   patch_masks=patch_masks, sample_patch_num=sample_patch_num)
        if decoder_rows_per_input > 1:
            from ofa_ds.model.encoder import reorder_encoder_out

            rows = torch.arange(src_tokens.shape[0], device=src_tokens.device)
            encoder_out = reorder_encoder_out(encoder_out, rows.repeat_interleave(decoder_rows_per_input))
        logits, extra = self.decoder(prev_output_tokens, encoder_out, code_masks=code_masks)
        extra["encoder_out"] = encoder_out
        return logits, extra

    def num_parameters(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- checkpoint I/O (implemented in ofa_ds.model.checkpoint) ------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "OFAModel":
        """Load a fairseq ``.pt``, an OFA-HF directory or an ofa-ds directory.

        kwargs: ``patch_image_size`` (interpolate image position embeddings to this size),
        ``dtype`` (default float32), ``config_overrides`` (dict of OFAConfig fields, e.g.
        dropout rates for training).
        """
        from ofa_ds.model.checkpoint import load_pretrained

        return load_pretrained(path, **kwargs)

    def save_pretrained(self, path: str | Path, format: str = "ofa-ds", **kwargs) -> Path:
        """Write ``format`` = ``ofa-ds`` | ``hf`` (directories) or ``fairseq`` (a ``.pt``).

        kwargs: ``hf_weights`` = ``bin`` (default) | ``safetensors`` | ``both`` for ``hf``.
        """
        from ofa_ds.model.checkpoint import save_pretrained

        return save_pretrained(self, path, format=format, **kwargs)
