"""Model structure: sizes, flavors, position tables, gradients on the test flavor."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.config.flavors import EXPECTED_PARAMS, get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.model.position import code_position_index, image_bucket_table, token_bucket_table


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_counts_on_meta(name):
    with torch.device("meta"):
        model = OFAModel(get_flavor(name))
    assert model.num_parameters() == EXPECTED_PARAMS[name]


def test_token_bucket_spot_values():
    t = token_bucket_table(256)
    # rel = query - key -> index
    assert [int(t[i, 0]) for i in (0, 5, 129, 200, 1023)] == [255, 260, 384, 411, 510]
    assert int(t[0, 1]) == 254


def test_image_bucket_spot_values():
    t = image_bucket_table(42)
    assert t.shape == (1765, 1765)
    assert int(t[5, 5]) == 3444 and int(t[0, 7]) == 6889 and int(t[7, 0]) == 6890 and int(t[0, 0]) == 6891
    assert int(t.max()) == 6891


def test_code_position_index():
    idx = code_position_index(128, 42)
    assert idx.shape == (1026,) and int(idx[0]) == 0 and int(idx[1]) == 1
    assert int(idx[17]) == 1 + 42 and int(idx[256]) == 1 + 15 * 42 + 15 and int(idx[257]) == 1024


def make_batch(vocab, B=3, S=7, T=5, image=64):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (B, S), generator=g)
    src[:, 0], src[:, -1] = 0, 2
    src[0, -2:] = 1  # padding
    prev = torch.randint(4, vocab, (B, T), generator=g)
    prev[:, 0] = 0
    prev[1, -1] = 1
    return dict(src_tokens=src, src_lengths=src.ne(1).sum(1), prev_output_tokens=prev,
                patch_images=torch.randn(B, 3, image, image, generator=g),
                patch_masks=torch.tensor([True, False, True]),
                code_masks=torch.tensor([False, False, True]))


def test_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).train()
    logits, _ = model(**make_batch(500))
    assert logits.shape == (3, 5, 500)
    logits.float().logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_sample_patch_num_keeps_positions():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).eval()
    b = make_batch(500)
    enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"],
                        sample_patch_num=5)
    assert enc["encoder_out"].shape[1] == 5 + b["src_tokens"].shape[1]


def test_image_too_large_is_refused():
    model = OFAModel(get_flavor("test", vocab_size=500, image_bucket_size=2, code_image_size=16))
    b = make_batch(500, image=64)
    with pytest.raises(ValueError, match="exceeds"):
        model(**b)


def test_entangle_quirk_is_a_switch():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).eval()
    b = make_batch(500)
    with torch.no_grad():
        out = model(**b)[0]
        model.decoder.cfg = model.decoder.cfg.replace(disable_entangle=False)
        assert not torch.allclose(model(**b)[0], out)
