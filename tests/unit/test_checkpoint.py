"""Checkpoint formats: round trips, strictness, derived buffers, interpolation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ofa_ds.cli import main as cli_main
from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.checkpoint import interpolate_image_positions, load_fairseq_file
from ofa_ds.model.ofa import OFAModel


def tiny_inputs(golden_dir):
    inputs = np.load(golden_dir / "inputs.npz")
    keys = ("src_tokens", "src_lengths", "prev_output_tokens", "patch_images", "patch_masks", "code_masks")
    return {k: torch.from_numpy(inputs[f"B.{k}"]) for k in keys}


def logits_of(model, b):
    with torch.no_grad():
        return model.eval()(**b)[0]


def test_round_trip_fairseq_ours_hf_ours_fairseq(golden_dir, tmp_path):
    src = golden_dir / "ofa_tiny_golden.pt"
    b = tiny_inputs(golden_dir)
    m0 = OFAModel.from_pretrained(src)
    ref = logits_of(m0, b)
    m0.save_pretrained(tmp_path / "ours1")
    m1 = OFAModel.from_pretrained(tmp_path / "ours1")
    m1.save_pretrained(tmp_path / "hf", format="hf")
    m2 = OFAModel.from_pretrained(tmp_path / "hf")
    m2.save_pretrained(tmp_path / "ours2")
    m3 = OFAModel.from_pretrained(tmp_path / "ours2")
    # fairseq releases are float16; write them the same way from a copy.
    out = copy.deepcopy(m3).half().save_pretrained(tmp_path / "back.pt", format="fairseq")

    original = load_fairseq_file(src)["model"]
    written = load_fairseq_file(out)["model"]
    stripped = {"encoder.token_rp_bucket", "encoder.image_rp_bucket",
                "decoder.token_rp_bucket", "decoder.image_rp_bucket"}  # removed from the fixture
    assert set(written) == set(original) | stripped
    for k, v in original.items():
        assert written[k].dtype == v.dtype and torch.equal(written[k], v), k
    assert written["decoder.output_projection.weight"].data_ptr() == written["encoder.embed_tokens.weight"].data_ptr()
    m4 = OFAModel.from_pretrained(out)
    assert m4.config == m0.config
    for m in (m1, m2, m3, m4):
        assert torch.equal(logits_of(m, b), ref)


def test_hf_layout_names_and_config(golden_dir, tmp_path):
    import json

    from safetensors.torch import load_file

    OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt").save_pretrained(tmp_path, format="hf",
                                                                                hf_weights="safetensors")
    state = load_file(tmp_path / "model.safetensors")
    assert "decoder.layers.0.cross_attn.q_proj.weight" in state
    assert "encoder.layers.0.self_attn_mid_layer_norm.weight" in state
    assert "decoder.layers.0.cross_attn_mid_layer_norm.weight" in state
    assert state["decoder.image_position_idx"].shape == (1025,)
    assert not any("encoder_attn" in k or k.endswith("version") for k in state)
    assert not (tmp_path / "pytorch_model.bin").exists()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "ofa" and cfg["d_model"] == 256 and cfg["resnet_type"] == "resnet50"


def test_hf_with_prefix_and_single_tied_name(golden_dir, tmp_path):
    """Early HF revisions wrap the model under ``model.``; files may hold one tied name."""
    from safetensors.torch import load_file, save_file

    m = OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt")
    m.save_pretrained(tmp_path, format="hf", hf_weights="safetensors")
    state = load_file(tmp_path / "model.safetensors")
    state = {k: v for k, v in state.items() if k not in ("decoder.embed_tokens.weight",
                                                         "decoder.output_projection.weight")}
    save_file({f"model.{k}": v for k, v in state.items()}, tmp_path / "model.safetensors")
    b = tiny_inputs(golden_dir)
    assert torch.equal(logits_of(OFAModel.from_pretrained(tmp_path), b), logits_of(m, b))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    OFAModel(get_flavor("test", vocab_size=300)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("encoder.layers.0.fc1.bias")
    state["encoder.layers.0.bogus"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        OFAModel.from_pretrained(tmp_path)
    assert "encoder.layers.0.fc1.bias" in str(err.value) and "encoder.layers.0.bogus" in str(err.value)


def test_wrong_present_buffer_is_rejected(tmp_path):
    m = OFAModel(get_flavor("test", vocab_size=300))
    path = m.save_pretrained(tmp_path / "x.pt", format="fairseq")
    ckpt = torch.load(path, weights_only=False)
    ckpt["model"]["encoder.token_rp_bucket"] = ckpt["model"]["encoder.token_rp_bucket"].clone()
    ckpt["model"]["encoder.token_rp_bucket"][3, 4] += 1
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="token_rp_bucket"):
        OFAModel.from_pretrained(path)


def test_position_interpolation_is_explicit(golden_dir):
    m = OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt", patch_image_size=480)
    base = OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt")
    assert m.config.patch_image_size == 480
    w, w0 = m.encoder.embed_image_positions.weight, base.encoder.embed_image_positions.weight
    assert not torch.equal(w, w0)
    assert torch.equal(w[0], w0[0])
    # Cells beyond the new 30x30 grid are untouched; identity when sizes agree.
    assert torch.equal(w[1 + 41 * 42 + 41], w0[1 + 41 * 42 + 41])
    same = interpolate_image_positions(w0, 42, 16, 16)
    torch.testing.assert_close(same, w0)


def test_convert_cli(golden_dir, tmp_path, capsys):
    src = golden_dir / "ofa_tiny_golden.pt"
    assert cli_main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "ofa-ds"]) == 0
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "f.pt"), "--to", "fairseq",
                     "--dtype", "float16"]) == 0
    assert "33,488,336 parameters" in capsys.readouterr().out
    b = tiny_inputs(golden_dir)
    assert torch.equal(logits_of(OFAModel.from_pretrained(tmp_path / "f.pt"), b),
                       logits_of(OFAModel.from_pretrained(src), b))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not an OFA checkpoint"):
        OFAModel.from_pretrained(tmp_path)
