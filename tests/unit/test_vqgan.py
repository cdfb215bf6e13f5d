"""VQ-GAN (ofa_ds/vqgan) with random weights: layout of the published keys, shapes, code range,
determinism, the two quantisers' definitions, checkpoint loading, encode→decode."""
from __future__ import annotations

import random

import pytest
import torch

from ofa_ds.vqgan import VQGAN
from preprocessing.scenes import random_scene

# Small convolutions: a second intra-op thread only oversubscribes a shared CI machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VQGAN.from_flavor("tiny")


def scene_batch(n: int, size: int) -> torch.Tensor:
    rng = random.Random(3)
    imgs = [random_scene(rng, size, size).render() for _ in range(n)]
    return torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
                        .permute(2, 0, 1).float() / 255 for im in imgs])


def test_published_key_names_and_shapes():
    # A few keys of taming-transformers' vqgan_gumbel_f8_8192 / imagenet_f16 checkpoints.
    with torch.device("meta"):
        f8 = VQGAN.from_flavor("gumbel_f8").state_dict()
        f16 = VQGAN.from_flavor("f16").state_dict()
    expect_f8 = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.3.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.proj.weight": (8192, 256, 1, 1),
        "quantize.embed.weight": (8192, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.up.3.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.2.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.norm2.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in expect_f8.items():
        assert tuple(f8[key].shape) == shape, key
    assert "decoder.up.0.upsample.conv.weight" not in f8 and "encoder.down.3.downsample.conv.weight" not in f8
    assert not any(".attn." in k for k in f8 if k.startswith(("encoder.down.0", "encoder.down.1", "encoder.down.2")))
    assert tuple(f16["quantize.embedding.weight"].shape) == (16384, 256)
    assert tuple(f16["encoder.down.4.attn.0.v.weight"].shape) == (512, 512, 1, 1)
    assert "quantize.proj.weight" not in f16


def test_shapes_range_and_determinism(tiny):
    images = scene_batch(3, 32)
    codes = tiny.encode(images)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 8192
    assert torch.equal(codes, tiny.encode(images))               # no Gumbel noise at encode time
    assert torch.equal(codes[1:2], tiny.encode(images[1:2]))     # independent of the batch
    # Gumbel head: the code is the argmax of the projection's logits.
    logits = tiny.quantize.proj(tiny.quant_conv(tiny.encoder(images * 2 - 1)))
    assert torch.equal(codes, logits.argmax(1))

    pixels = tiny.decode(codes)
    assert pixels.shape == (3, 3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    assert torch.equal(pixels, tiny.decode(codes.flatten(1)))   # OFA's flat layout
    # decode runs the codebook vectors through the decoder: other codes, other pixels
    assert not torch.equal(pixels[0], tiny.decode(codes[:1] ^ 1)[0])
    with pytest.raises(ValueError, match="codes must lie"):
        tiny.decode(torch.full((1, 4, 4), 8192))
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode(torch.rand(1, 3, 60, 64))


def test_attention_is_taming_single_head_attention():
    """AttnBlock = x + proj_out(v · softmax(qᵀk / √C)) over the H·W positions (the original's bmm form)."""
    from ofa_ds.vqgan.modules import AttnBlock

    torch.manual_seed(2)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 4, 5)
    n = block.norm(x)
    q, k, v = (conv(n).flatten(2) for conv in (block.q, block.k, block.v))   # [B, C, N]
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) / 32 ** 0.5, dim=2)  # [B, Nq, Nk]
    expected = x + block.proj_out(torch.bmm(v, weights.transpose(1, 2)).reshape(x.shape))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_plain_quantiser_is_nearest_codebook_vector():
    torch.manual_seed(1)
    vq = VQGAN.from_flavor("tiny", quantizer="vq", n_embed=64)
    z = vq.quant_conv(vq.encoder(scene_batch(2, 32) * 2 - 1))
    dist = ((z.permute(0, 2, 3, 1)[..., None, :] - vq.quantize.embedding.weight) ** 2).sum(-1)
    assert torch.equal(vq.quantize.codes(z), dist.argmin(-1))
    assert vq.encode(scene_batch(2, 32)).max() < 64


def test_checkpoint_round_trip(tmp_path, tiny):
    # The Lightning layout: {"state_dict": {...original keys..., "loss.*": training-only}}.
    state = {**tiny.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2)}
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, path)
    loaded = VQGAN.from_checkpoint(path, "tiny")
    images = scene_batch(1, 32)
    assert torch.equal(loaded.encode(images), tiny.encode(images))

    from safetensors.torch import save_file
    save_file(tiny.state_dict(), str(tmp_path / "tiny.safetensors"))
    assert torch.equal(VQGAN.from_checkpoint(tmp_path / "tiny.safetensors", "tiny").encode(images), tiny.encode(images))

    broken = {k: v for k, v in state.items() if k != "decoder.conv_out.bias"}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing: \\['decoder.conv_out.bias'\\]"):
        VQGAN.from_checkpoint(tmp_path / "broken.pt", "tiny")
    torch.save({"state_dict": state, "hparams": _Opaque()}, tmp_path / "opaque.ckpt")
    with pytest.raises(ValueError, match="trust_pickle"):
        VQGAN.from_checkpoint(tmp_path / "opaque.ckpt", "tiny")
    assert VQGAN.from_checkpoint(tmp_path / "opaque.ckpt", "tiny", trust_pickle=True) is not None


class _Opaque:  # stands for the non-tensor objects Lightning pickles into a .ckpt
    pass
