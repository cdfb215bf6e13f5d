"""The DeepSpeed engine in one process (gloo, CPU): resume, crash-safe saves, ZeRO stages,
continued pretraining from the golden fixture, and finetuning through the same loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ofa_ds.engine import checkpoint as ckpt
from ofa_ds.engine.trainer import Trainer
from tests.engine.helpers import engine_config

pytestmark = pytest.mark.slow


def losses(history):
    return [h["loss"] for h in history]


def test_resume_reproduces_uninterrupted_losses(sample_data, tmp_path):
    full = Trainer(engine_config(sample_data, tmp_path / "full")).run()
    # "Killed" after step 3 (the checkpoint of step 2 is the latest complete one), then --resume to step 4.
    Trainer(engine_config(sample_data, tmp_path / "split")).run(until_step=3)
    resumed = Trainer(engine_config(sample_data, tmp_path / "split", **{"train.resume": True})).run()
    assert [h["step"] for h in resumed] == [3, 4]
    assert losses(resumed) == losses(full)[2:]  # bitwise
    # metrics.jsonl logs the replayed step 3 once: the resumed run dropped the killed run's record.
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4]
    assert [r["loss"] for r in records if "eval" not in r] == losses(full)
    assert losses(full)[0] > 0 and np.isfinite(losses(full)).all()


def test_crash_mid_save_keeps_previous_checkpoint(sample_data, tmp_path, monkeypatch):
    cfg = engine_config(sample_data, tmp_path, **{"train.max_steps": 4})
    trainer = Trainer(cfg)
    real_save = torch.save

    def dying_save(obj, path, *a, **k):
        if "step_00000004" in str(path) and str(path).endswith("ofa_rank0.pt"):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        trainer.run()
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert ckpt.read_latest(tmp_path / "checkpoints") == "step_00000002"
    assert not (tmp_path / "checkpoints" / "step_00000004").exists()  # the partial save is removed
    resumed = Trainer(engine_config(sample_data, tmp_path, **{"train.resume": True}))
    assert resumed.step == 2
    assert [h["step"] for h in resumed.run()] == [3, 4]


def test_keep_last(sample_data, tmp_path):
    Trainer(engine_config(sample_data, tmp_path, **{"train.max_steps": 3, "train.save_every": 1,
                                                    "train.keep_last": 2})).run()
    tags = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step_00000002", "step_00000003"]


def strict_json_lines(path):
    """metrics.jsonl as a strict JSON reader sees it (bare NaN/Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def zero0_first_step(sample_data, tmp_path_factory):
    """The reference, computed in this session (never read from an earlier run's cache)."""
    out = tmp_path_factory.mktemp("zero0")
    cfg = engine_config(sample_data, out, **{"train.max_steps": 1, "train.save_every": 0, "train.zero_stage": 0})
    first = Trainer(cfg).run()[0]
    assert strict_json_lines(out / "metrics.jsonl")[0]["grad_norm"] == pytest.approx(first["grad_norm"])
    return first


@pytest.mark.parametrize("zero", ["1", "2", "3", "3-offload"])
def test_zero_stages_give_the_same_first_step_loss(sample_data, tmp_path, zero, zero0_first_step):
    """Same first loss and, in every mode (ZeRO-0 fp32 included), the same gradient norm."""
    extra = {"train.max_steps": 1, "train.save_every": 0}
    if zero == "3-offload":
        extra.update({"train.zero_stage": 3, "train.offload": True})
    else:
        extra["train.zero_stage"] = int(zero)
    first = Trainer(engine_config(sample_data, tmp_path, **extra)).run()[0]
    assert np.isfinite(zero0_first_step["loss"]) and np.isfinite(zero0_first_step["grad_norm"])
    assert first["loss"] == pytest.approx(zero0_first_step["loss"], rel=1e-6)
    assert first["grad_norm"] == pytest.approx(zero0_first_step["grad_norm"], rel=1e-4)


def test_grad_norm_with_clipping_off(sample_data, tmp_path, zero0_first_step):
    """ZeRO-0 fp32 without clipping measures the same (pre-clip) norm before the step."""
    cfg = engine_config(sample_data, tmp_path, **{"train.max_steps": 1, "train.save_every": 0,
                                                  "optim.clip_norm": 0.0})
    first = Trainer(cfg).run()[0]
    assert first["grad_norm"] == pytest.approx(zero0_first_step["grad_norm"], rel=1e-5)


def test_metrics_jsonl_is_strict_json(tmp_path):
    """Non-finite values (an overflowed step's norm) are written as null, not as bare NaN."""
    from ofa_ds.engine.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, progress=False, total_steps=1)
    logger.log_step(1, {"loss": 1.0, "lr": 0.1, "samples_per_s": 2.0, "grad_norm": float("nan"),
                        "loss_scale": float("inf")})
    logger.log_eval(1, {"valid_loss": float("-inf")})
    logger.close()
    rows = strict_json_lines(tmp_path / "metrics.jsonl")
    assert rows[0]["grad_norm"] is None and rows[0]["loss_scale"] is None and rows[1]["eval"]["valid_loss"] is None


def test_continued_pretraining_starts_from_the_fixture(sample_data, golden_dir, ofa_bpe_dir, tmp_path):
    from ofa_ds.model.ofa import OFAModel

    src = golden_dir / "ofa_tiny_golden.pt"
    cfg = engine_config(sample_data, tmp_path, **{
        "model.init_from": str(src), "data.vocab_dir": str(ofa_bpe_dir), "train.max_steps": 1,
        "train.save_every": 0, "model.dropout": 0.0, "model.encoder_drop_path_rate": 0.0,
        "model.decoder_drop_path_rate": 0.0, "data.sample_patch_num": "none"})
    trainer = Trainer(cfg)
    no_noise = {"dropout": 0.0, "encoder_drop_path_rate": 0.0, "decoder_drop_path_rate": 0.0}
    fixture = OFAModel.from_pretrained(src, config_overrides=no_noise)
    for (name, p), q in zip(trainer.engine.module.state_dict().items(), fixture.state_dict().values()):
        assert torch.equal(p, q), name
    assert trainer.engine.global_steps == 0 and trainer.step == 0
    # Its first loss is the fixture model's loss on the same first batch (a second loader
    # with the same seed yields it; dropout and drop path are off, BatchNorm in train mode).
    batch = next(iter(trainer.task.build_train_loader(rank=0, world_size=1, seed=cfg.train.seed)))
    expected, _ = trainer.task.training_forward(fixture.train(), batch, update_num=0,
                                                denominators=trainer.task.token_counts(batch))
    got = losses(trainer.run())[0]
    assert got == pytest.approx(expected.item(), rel=1e-5)


def test_finetune_caption_through_the_same_engine(sample_data, tmp_path):
    cfg = engine_config(sample_data, tmp_path, **{"task.name": "caption", "train.max_steps": 3,
                                                  "train.save_every": 3, "task.eval_max_len": 4})
    history = Trainer(cfg).run()
    assert len(history) == 3 and all("caption_loss" in h for h in history)
    evals = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals and set(evals[0]["eval"]) == {"valid_loss", "valid_cider"}
    assert evals[0]["eval"]["valid_cider"] >= 0.0


def test_moe_switch_one_expert_equals_dense(sample_data, tmp_path):
    """model.moe_layers swaps FFNs for DeepSpeed MoE layers; one top-1 expert initialised from
    the dense FFN, with the load-balancing weight at 0, trains exactly like the dense model."""
    common = {"train.max_steps": 2, "train.save_every": 0, "model.dropout": 0.0,
              "model.encoder_drop_path_rate": 0.0, "model.decoder_drop_path_rate": 0.0,
              "data.sample_patch_num": "none"}
    dense = losses(Trainer(engine_config(sample_data, tmp_path / "dense", **common)).run())
    moe = {"model.moe_layers": "encoder:1;decoder:0", "model.moe_num_experts": 1, "model.moe_top_k": 1,
           "model.moe_capacity_factor": 64.0, "model.moe_aux_weight": 0.0}
    one = losses(Trainer(engine_config(sample_data, tmp_path / "one", **common, **moe)).run())
    assert one == pytest.approx(dense, rel=1e-5)
    moe.update({"model.moe_num_experts": 2, "model.moe_aux_weight": 0.01})
    two = Trainer(engine_config(sample_data, tmp_path / "two", **common, **moe))
    assert np.isfinite(losses(two.run())).all()


def test_model_builds_under_zero_init():
    """ZeRO-3 construction (parameters partitioned as they are created) still initialises."""
    import deepspeed

    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.engine.distributed import init_distributed
    from ofa_ds.model.ofa import OFAModel

    init_distributed()
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = OFAModel(get_flavor("test", vocab_size=300))
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        emb = model.encoder.embed_tokens.weight
        assert emb.shape == (300, 64) and torch.all(emb[1] == 0) and 0.015 < emb.std() < 0.025


def test_tensorboard_example_draws_target_boxes(sample_data, tmp_path):
    """The logged example: image in [0, 1], target text, and grounding/detection boxes drawn."""
    trainer = Trainer(engine_config(sample_data, tmp_path, **{"train.save_every": 0}))
    seen_box = False
    for i, (vl, extras) in zip(range(4), trainer.loader):
        for group in (vl, extras):
            image, text = trainer.task.example_for_logging(group)
            assert image.shape[0] == 3 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
            assert isinstance(text, str) and text
            if "<bin_" in text:
                raw = (group["net_input"]["patch_images"][0] * 0.5 + 0.5).clamp(0, 1)
                seen_box = seen_box or not torch.allclose(image, raw, atol=1 / 255)
    assert seen_box


def test_bf16_step(sample_data, tmp_path):
    """The bf16 path (DeepSpeed's BF16 optimizer, images cast, conf kept in fp32) runs and its
    first loss is close to fp32's (slow on this CPU, hence one step of the test flavor)."""
    common = {"train.max_steps": 1, "train.save_every": 0, "model.dropout": 0.0,
              "model.encoder_drop_path_rate": 0.0, "model.decoder_drop_path_rate": 0.0,
              "data.sample_patch_num": "none"}
    fp32 = losses(Trainer(engine_config(sample_data, tmp_path / "fp32", **common)).run())[0]
    bf16 = losses(Trainer(engine_config(sample_data, tmp_path / "bf16", **common,
                                        **{"train.precision": "bf16", "train.zero_stage": 1})).run())[0]
    assert bf16 == pytest.approx(fp32, rel=2e-2)
