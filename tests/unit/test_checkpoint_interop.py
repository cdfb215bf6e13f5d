"""What other software reads from our files: OFA-HF's key layout and weight files, the source's
dtype in fairseq files, the user's umask, and ResNet depths OFA-HF cannot build."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ofa_ds.cli import main as cli_main
from ofa_ds.config.flavors import get_flavor
from ofa_ds.model import state_dict_adapter as sda
from ofa_ds.model.checkpoint import load_fairseq_file
from ofa_ds.model.ofa import OFAModel
from ofa_ds.model.position import code_position_index, image_bucket_table, token_bucket_table


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    return OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt")


def hf_keys_expected(model) -> set[str]:
    """OFA-HF's OFAModel state dict (spec ofa_model.md §5.2): our names renamed to HF's, the three
    tied embedding names, and the buffers it registers; no fairseq ``version``."""
    names = set(sda.fairseq_to_hf_names(dict.fromkeys(model.state_dict())))
    buffers = {"encoder.token_rp_bucket", "encoder.image_rp_bucket", "decoder.token_rp_bucket",
               "decoder.image_rp_bucket", "decoder.image_position_idx"}
    return names | set(sda.TIED_NAMES) | buffers


def test_hf_export_has_every_key_ofa_hf_expects(golden_model, tmp_path):
    from safetensors.torch import load_file

    golden_model.save_pretrained(tmp_path, format="hf", hf_weights="both")
    bin_state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    st_state = load_file(tmp_path / "model.safetensors")
    assert set(bin_state) == set(st_state) == hf_keys_expected(golden_model)
    for k, v in bin_state.items():
        assert torch.equal(v, st_state[k]), k
    # Tied names are one tensor in the .bin (no size cost), equal copies in safetensors.
    ptrs = {bin_state[n].untyped_storage().data_ptr() for n in sda.TIED_NAMES}
    assert len(ptrs) == 1
    assert torch.equal(bin_state["encoder.token_rp_bucket"], token_bucket_table(256))
    assert torch.equal(bin_state["decoder.image_rp_bucket"], image_bucket_table(42))
    assert torch.equal(bin_state["decoder.image_position_idx"], code_position_index(128, 42, tail=768))
    assert bin_state["decoder.image_position_idx"].shape == (1025,)
    # Each file alone loads back to the same model.
    for only in ("pytorch_model.bin", "model.safetensors"):
        d = tmp_path / only.replace(".", "_")
        golden_model.save_pretrained(d, format="hf", hf_weights="bin" if only.endswith("bin") else "safetensors")
        assert sorted(p.name for p in d.iterdir()) == sorted(["config.json", only])
        back = OFAModel.from_pretrained(d)
        for (k, a), b in zip(golden_model.state_dict().items(), back.state_dict().values()):
            assert torch.equal(a, b), k


def test_hf_refuses_a_resnet_depth_it_cannot_build(tmp_path, capsys):
    model = OFAModel(get_flavor("test", vocab_size=300))  # ResNet (1, 1, 1): no OFA-HF resnet_type
    with pytest.raises(ValueError, match=r"\(1, 1, 1\) blocks per stage.*resnet50 \(3, 4, 6\)"):
        model.save_pretrained(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf" / "config.json").exists()
    model.save_pretrained(tmp_path / "ours")
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "OFA-HF builds only" in capsys.readouterr().err
    # fairseq: the written resnet_type says what it is (upstream refuses an unknown name).
    path = model.save_pretrained(tmp_path / "f.pt", format="fairseq")
    assert load_fairseq_file(path)["cfg"]["model"].resnet_type == "custom_1_1_1"
    assert OFAModel.from_pretrained(path).config.resnet_layers == (1, 1, 1)


def test_convert_keeps_the_source_dtype(golden_dir, tmp_path, capsys):
    src = golden_dir / "ofa_tiny_golden.pt"
    assert cli_main(["convert", str(src), str(tmp_path / "f.pt"), "--to", "fairseq"]) == 0
    assert "float16" in capsys.readouterr().out
    original, written = load_fairseq_file(src)["model"], load_fairseq_file(tmp_path / "f.pt")["model"]
    for k, v in original.items():
        assert written[k].dtype == v.dtype and torch.equal(written[k], v), k
    # Same bytes as the source plus the bucket tables the fixture had stripped (~66 MB of int64).
    buckets = sum(written[k].numel() * 8 for k in written if k.endswith("rp_bucket"))
    assert (tmp_path / "f.pt").stat().st_size < 1.05 * (src.stat().st_size + buckets)
    assert cli_main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "float16"


def test_written_files_follow_the_umask(tmp_path):
    model = OFAModel(get_flavor("tiny", vocab_size=300))
    old = os.umask(0o027)
    try:
        model.save_pretrained(tmp_path / "ours")
        model.save_pretrained(tmp_path / "hf", format="hf", hf_weights="both")
        model.save_pretrained(tmp_path / "f.pt", format="fairseq")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o640" for p in files}
