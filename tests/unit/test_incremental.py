"""Cached (incremental) decoding equals the full-sequence forward (spec ofa_model.md §3.16).

Each step passes the whole prefix and a cache list; only the last position is computed.
The logits of every non-pad position must match the one-shot forward within 1e-5.

The golden weights are scaled up (decoder features reach |45|), so in float32 the two paths
differ by float rounding alone (about 3e-5: a 1-row and a T-row matmul sum in different
orders). The golden check therefore runs in float64, where the two paths agree to ~1e-13,
so the 1e-5 bound catches any real difference, and again in float32 at the fixture's
fp32 noise floor (1e-4).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.decoder import reorder_cache
from ofa_ds.model.encoder import reorder_encoder_out
from ofa_ds.model.ofa import OFAModel

ATOL = 1e-5
FP32_GOLDEN_ATOL = 1e-4


# Decoding steps are tiny ops: one intra-op thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stepwise_logits(model, prev_output_tokens, enc, code_masks):
    """Logits [B, T, V] computed one position at a time through the KV cache."""
    cache: list = []
    steps = [model.decoder(prev_output_tokens[:, :t], enc, code_masks=code_masks, cache=cache)[0]
             for t in range(1, prev_output_tokens.shape[1] + 1)]
    assert all(s.shape[1] == 1 for s in steps)
    return torch.cat(steps, dim=1)


def assert_cached_matches_full(model, batch, atol=ATOL):
    dtype = next(model.parameters()).dtype
    batch = {k: v.to(dtype) if v is not None and v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        enc = model.encoder(batch["src_tokens"], batch["src_lengths"],
                            patch_images=batch["patch_images"], patch_masks=batch["patch_masks"])
        prev, code_masks = batch["prev_output_tokens"], batch["code_masks"]
        full, _ = model.decoder(prev, enc, code_masks=code_masks)
        cached = stepwise_logits(model, prev, enc, code_masks)
    real = prev.ne(model.config.pad)
    torch.testing.assert_close(cached[real], full[real], atol=atol, rtol=0)


# -- the golden checkpoint ----------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(golden_dir):
    model = OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt").eval()
    return model, np.load(golden_dir / "inputs.npz")


def golden_batch(inputs, name):
    keys = ("src_tokens", "src_lengths", "patch_images", "patch_masks", "code_masks",
            "prev_output_tokens")
    return {k: torch.from_numpy(inputs[f"{name}.{k}"]) for k in keys}


@pytest.fixture(scope="module")
def golden_fp64(golden):
    return copy.deepcopy(golden[0]).double()


@pytest.mark.parametrize("name", ["A", "B"])  # B mixes a text and an image-code sample
def test_golden_cached_decoding_matches_full_fp64(golden, golden_fp64, name):
    assert_cached_matches_full(golden_fp64, golden_batch(golden[1], name), atol=ATOL)


@pytest.mark.parametrize("name", ["A", "B"])
def test_golden_cached_decoding_matches_full_fp32(golden, name):
    model, inputs = golden
    assert_cached_matches_full(model, golden_batch(inputs, name), atol=FP32_GOLDEN_ATOL)


# -- a randomly initialised small model ---------------------------------------------------
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return OFAModel(get_flavor("test")).eval()


def small_batch(cfg, code_masks, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 1000, (3, 6), generator=g)
    src[:, 0], src[:, -1] = cfg.bos, cfg.eos
    src[2, 4:] = cfg.pad
    prev = torch.randint(4, cfg.vocab_size, (3, T), generator=g)
    prev[:, 0] = cfg.bos
    prev[1, T - 2:] = cfg.pad
    return {
        "src_tokens": src,
        "src_lengths": src.ne(cfg.pad).sum(1),
        "patch_images": torch.randn(3, 3, 64, 64, generator=g),
        "patch_masks": torch.tensor([True, False, True]),
        "code_masks": code_masks,
        "prev_output_tokens": prev,
    }


@pytest.mark.parametrize("code_masks", [None, torch.tensor([False, True, True]),
                                        torch.tensor([True, True, True])],
                         ids=["no_code_masks", "mixed", "all_code"])
def test_small_cached_decoding_matches_full(small, code_masks):
    assert_cached_matches_full(small, small_batch(small.config, code_masks))


def test_reordered_cache_matches_full(small):
    """Beam search reorders (and drops/repeats) batch rows of the cache between steps."""
    b = small_batch(small.config, torch.tensor([False, True, False]), T=6, seed=1)
    prev = b["prev_output_tokens"]
    new_order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        enc = small.encoder(b["src_tokens"], b["src_lengths"], patch_images=b["patch_images"],
                            patch_masks=b["patch_masks"])
        cache: list = []
        for t in range(1, 4):
            small.decoder(prev[:, :t], enc, code_masks=b["code_masks"], cache=cache)
        reorder_cache(cache, new_order)
        enc = reorder_encoder_out(enc, new_order)
        prev, code_masks = prev[new_order], b["code_masks"][new_order]
        cached = torch.cat([small.decoder(prev[:, :t], enc, code_masks=code_masks, cache=cache)[0]
                            for t in range(4, prev.shape[1] + 1)], dim=1)
        full, _ = small.decoder(prev, enc, code_masks=code_masks)
    torch.testing.assert_close(cached, full[:, 3:], atol=ATOL, rtol=0)
