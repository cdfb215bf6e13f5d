"""Typed config: file + overrides, validation messages, every shipped config parses."""
from __future__ import annotations

from pathlib import Path

import pytest

from ofa_ds.config.load import load_config
from ofa_ds.engine.ds_config import build_ds_config
from ofa_ds.engine.schedule import polynomial_decay_factor

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "launch" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_builds_deepspeed_json(path):
    cfg = load_config(path)
    ds = build_ds_config(cfg, on_gpu=True, pipeline_groups=2)
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.micro_batch
    assert ds["gradient_clipping"] == cfg.optim.clip_norm
    assert ds["zero_optimization"]["stage"] == cfg.train.zero_stage
    assert ("bf16" in ds) == (cfg.train.precision == "bf16")


def test_overrides_beat_the_file_and_are_typed(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nmax_steps = 5\n[optim]\nlr = 1e-3\n')
    cfg = load_config(f, ["train.max_steps=7", "optim.betas=(0.9, 0.98)", "data.sample_patch_num=none",
                          "train.offload=false"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.98)
    assert cfg.data.sample_patch_num is None and cfg.train.offload is False


@pytest.mark.parametrize("overrides, message", [
    (["train.micro_batch=4"], "multiple of 8"),
    (["train.offload=true"], "zero_stage=3"),
    (["train.precision=fp8"], "precision"),
    (["train.precision=bf16", "train.zero_stage=0"], "zero_stage=1"),
    (["train.nope=1"], "unknown field"),
    (["nosection.x=1"], "unknown section"),
    (["max_steps=3"], "section.field=value"),
])
def test_bad_configs_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_fp16_needs_a_gpu():
    cfg = load_config(None, ["train.precision=fp16"])
    with pytest.raises(ValueError, match="GPU"):
        build_ds_config(cfg, on_gpu=False)
    assert build_ds_config(cfg, on_gpu=True)["fp16"]["initial_scale_power"] == 7


def test_offload_template_and_pipeline_accumulation():
    cfg = load_config(None, ["train.zero_stage=3", "train.offload=true"])
    ds = build_ds_config(cfg, on_gpu=False)
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is True
    cfg = load_config(None, ["parallel.pp=2", "parallel.tp=2", "train.zero_stage=1", "train.grad_accum=3"])
    ds = build_ds_config(cfg, on_gpu=False, pipeline_groups=2)
    assert ds["gradient_accumulation_steps"] == 6 and ds["pipeline"]["pipe_partitioned"] is False


def test_schedule_warmup_then_linear_decay():
    f = lambda s: polynomial_decay_factor(s, total=100, warmup=10, peak=1e-4, end=0.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_move_to_casts_images_only():
    import torch

    from ofa_ds.tasks.base import move_to

    batch = ({"net_input": {"patch_images": torch.ones(1, 3, 2, 2), "src_tokens": torch.ones(1, 2).long()},
              "conf": torch.tensor([0.3])}, {"conf": torch.tensor([2.0])})
    out = move_to(batch, torch.device("cpu"), torch.bfloat16)
    assert out[0]["net_input"]["patch_images"].dtype == torch.bfloat16
    assert out[0]["conf"].dtype == torch.float32 and float(out[0]["conf"]) == pytest.approx(0.3, abs=1e-7)
    assert out[0]["net_input"]["src_tokens"].dtype == torch.long


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=-0.001"], "optim.lr must be > 0"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["optim.lr=[0.001]"], r"optim.lr must be a finite number, got \[0.001\] \(list\)"),
    (["optim.betas=(0.9, 1.0)"], r"optim.betas\[1\] must be in \[0, 1\)"),
    (["optim.betas=(-0.1, 0.99)"], r"optim.betas\[0\]"),
    (["optim.weight_decay=-0.01"], "optim.weight_decay must be >= 0"),
    (["model.dropout=1.0"], r"model.dropout must be in \[0, 1\)"),
    (["model.attention_dropout=-0.1"], "model.attention_dropout"),
    (["optim.warmup_ratio=1.5"], r"optim.warmup_ratio must be in \[0, 1\]"),
    (["optim.clip_norm=-1"], "optim.clip_norm must be >= 0"),
    (["task.label_smoothing=1"], r"task.label_smoothing must be in \[0, 1\)"),
    (["train.save_every=-5"], "train.save_every must be >= 0"),
    (["train.max_steps=2.5"], "train.max_steps must be an integer, got 2.5"),
    (["train.micro_batch=8.0"], "train.micro_batch must be an integer, got 8.0"),
    (["train.resume=1.0"], "train.resume"),
    (["parallel.tp=0"], "parallel.tp must be >= 1"),
    (["parallel.pp=-1"], "parallel.pp must be >= 1"),
    (["data.weights={'vision_language': 16, 'txt': 2}"], "data.weights names an unknown stream 'txt'"),
    (["data.weights={'vision_language': 16, 'text': -2}"], "data.weights.text must be a number >= 0"),
])
def test_bad_values_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_bad_values_in_a_file_are_refused_too(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nmax_steps = 2.5\n")
    with pytest.raises(ValueError, match="train.max_steps must be an integer"):
        load_config(f)


def test_trainer_refuses_a_bad_config_before_building_anything(monkeypatch):
    """A config built in code (not through load_config) is refused before distributed start-up
    or any model is built."""
    from ofa_ds.config.schema import TrainConfig
    from ofa_ds.engine import trainer as trainer_mod

    def must_not_run(*a, **k):
        raise AssertionError("built something before validating the config")

    monkeypatch.setattr(trainer_mod, "init_distributed", must_not_run)
    monkeypatch.setattr(trainer_mod, "build_model", must_not_run)
    cfg = TrainConfig()
    cfg.parallel.tp = 0
    with pytest.raises(ValueError, match="parallel.tp must be >= 1"):
        trainer_mod.Trainer(cfg)
    cfg = TrainConfig()
    cfg.optim.lr = [0.001]
    with pytest.raises(ValueError, match="optim.lr must be a finite number"):
        trainer_mod.Trainer(cfg)
