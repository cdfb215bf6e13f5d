"""`ofa-ds bench train` runs and reports FLOPs per component and MFU."""
from __future__ import annotations

from ofa_ds.cli import main as cli_main
from ofa_ds.engine.flops import resnet_forward_flops, training_step_flops
from ofa_ds.config.flavors import get_flavor


def test_resnet_flops_match_hand_count():
    # conv1 alone at 224 px: 2 * 3*49 * 64 * 112*112 FLOPs; the whole 3-stage resnet50 is
    # known to be ~3.3 GMACs at 224 px (the full ResNet-50's 4.1 minus layer4's ~0.8).
    total = resnet_forward_flops((3, 4, 6), 224)
    assert 2 * 3 * 49 * 64 * 112 * 112 < total
    assert 6.0e9 < total < 7.0e9


def test_step_flops_split_by_component():
    flops = training_step_flops(get_flavor("tiny"), [(384, 40, 20, 16, 196), (256, 40, 20, 4, None)])
    assert set(flops) == {"resnet", "image_proj", "encoder", "decoder", "output_projection", "total"}
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")


def test_bench_train_cli(capsys):
    args = ["bench", "train", "--flavor", "test", "--rows", "8", "--image-size", "64", "--extras-image-size",
            "64", "--sample-patch-num", "8", "--steps", "1", "--variants", "base,checkpointing"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "MFU" in out and "checkpointing" in out and "resnet" in out


def test_bench_data_cli(sample_data, capsys):
    args = ["bench", "data", "--data", str(sample_data), "--workers", "0", "--batches", "2",
            "--patch-image-size", "64", "--code-image-size", "32"]
    assert cli_main(args) == 0
    assert "samples/s" in capsys.readouterr().out


def test_bench_train_through_the_deepspeed_engine(tmp_path, capsys, one_torch_thread):
    """The GPU benchmark's code path end to end on CPU: ZeRO-1 A/B of two variants, the
    profile, the micro-batch sweep, ZeRO-2, and the JSON the results table is made from."""
    import json

    out = tmp_path / "bench.json"
    args = ["bench", "train", "--engine", "deepspeed", "--device", "cpu", "--flavors", "test",
            "--vocab-size", "500", "--image-size", "32", "--extras-image-size", "32", "--sample-patch-num", "2",
            "--src-len", "8", "--tgt-len", "4", "--extras-tgt-len", "5", "--rows", "8", "--sweep", "16",
            "--variants", "today,rel_gather", "--sweep-variant", "rel_gather", "--profile", "today",
            "--zero", "1,2", "--rounds", "1", "--steps", "1", "--warmup", "0", "--profile-steps", "1",
            "--json", str(out)]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "each variant alone" in text and "micro-batch sweep" in text and "ZeRO-2" in text
    result = json.loads(out.read_text())
    runs = {(r["variant"], r["zero"], r["rows"]) for r in result["runs"]}
    assert {("today", 1, 8), ("rel_gather", 1, 8), ("rel_gather", 1, 16), ("today", 2, 8),
            ("rel_gather", 2, 16)} <= runs
    assert all(r["step_ms"] > 0 and r["mfu"] > 0 and r["flops"]["resnet"] > 0 for r in result["runs"])
    assert result["profiles"][0]["top"] and result["profiles"][0]["busy_ms"] > 0


def test_bench_data_vl_stages_cli(sample_data, capsys):
    args = ["bench", "data", "--data", str(sample_data), "--vl-stages", "--rows", "16", "--rounds", "1",
            "--patch-image-size", "64", "--jpeg-scale", "1"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "VL rows/s per core" in out and "loader workers" in out
    for stage in ("image decode", "resize+crop", "augment", "to tensor", "tokenise", "collate"):
        assert stage in out


def test_stream_images_equal_with_and_without_the_fast_paths(sample_data):
    import torch

    from ofa_ds.data import bench_stages, transforms as T
    from ofa_ds.data.streams.common import sample_rng
    from ofa_ds.data.vocab import Vocabulary

    stream = bench_stages._vl_stream(sample_data, Vocabulary.from_dir(sample_data / "vocab"), 64)
    try:
        for row in range(12):
            T.use_fast_paths(False)
            slow = stream.samples(row, sample_rng(7, "vision_language", 1, row))
            T.use_fast_paths(True)
            fast = stream.samples(row, sample_rng(7, "vision_language", 1, row))
            for a, b in zip(slow, fast):
                assert torch.equal(a.patch_image, b.patch_image) and torch.equal(a.source, b.source)
                assert torch.equal(a.target, b.target)
    finally:
        T.use_fast_paths(True)
