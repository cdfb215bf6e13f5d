"""A user's own DeepSpeed JSON: its own keys pass through, keys ofa-ds owns must agree with the config."""
from __future__ import annotations

import json

import pytest

from ofa_ds.config.load import load_config
from ofa_ds.engine.ds_config import DS_CONFIG_DIR, OWNED_KEYS, DeepSpeedConfigError, build_ds_config
from ofa_ds.train import pretrain_main


def user_json(tmp_path, data: dict):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return path


def test_user_keys_pass_through_and_owned_keys_are_filled_in(tmp_path):
    path = user_json(tmp_path, {"zero_optimization": {"stage": 1, "reduce_bucket_size": 12345},
                                "communication_data_type": "fp32", "train_micro_batch_size_per_gpu": 8})
    cfg = load_config(None, ["train.zero_stage=1", f"train.deepspeed_template={path}", "optim.clip_norm=2.5"])
    ds = build_ds_config(cfg, on_gpu=False, dp_size=2)
    assert ds["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 12345}
    assert ds["communication_data_type"] == "fp32"
    assert ds["gradient_clipping"] == 2.5 and ds["gradient_accumulation_steps"] == 1
    assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr
    # A file without a ZeRO block gets the configured stage (and offload), not DeepSpeed's 0.
    path = user_json(tmp_path, {"zero_allow_untested_optimizer": True})
    cfg = load_config(None, ["train.zero_stage=3", "train.offload=true", f"train.deepspeed_template={path}"])
    zero = build_ds_config(cfg, on_gpu=False)["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("template, overrides, message", [
    ({"zero_optimization": {"stage": 1}}, [], "zero_optimization.stage is 1 but train.zero_stage=0"),
    ({"bf16": {"enabled": True}}, [], "bf16.enabled is true but train.precision='fp32'"),
    ({"bf16": {"enabled": False}}, ["train.precision=bf16", "train.zero_stage=1"], "bf16.enabled is false"),
    ({"train_micro_batch_size_per_gpu": 4}, [], "train_micro_batch_size_per_gpu is 4 but train.micro_batch=8"),
    ({"gradient_accumulation_steps": 2}, [], "train.grad_accum=1"),
    ({"train_batch_size": 64}, [], "train_batch_size is 64"),
    ({"gradient_clipping": 1.0}, [], "optim.clip_norm=5.0"),
    ({"optimizer": {"type": "Adam"}}, [], "has 'optimizer'"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, ["train.zero_stage=3"],
     "train.offload=false"),
])
def test_disagreeing_template_is_refused(tmp_path, template, overrides, message):
    path = user_json(tmp_path, template)
    cfg = load_config(None, [*overrides, f"train.deepspeed_template={path}"])
    with pytest.raises(DeepSpeedConfigError) as err:
        build_ds_config(cfg, on_gpu=False, dp_size=2)
    assert message in str(err.value) and str(path) in str(err.value)


def test_cli_deepspeed_config_flag_refuses_in_one_line(tmp_path, sample_data, capsys):
    path = user_json(tmp_path, {"zero_optimization": {"stage": 1}})
    overrides = [f"data.root={sample_data}", "model.flavor=test", f"train.out_dir={tmp_path / 'run'}"]
    assert pretrain_main(["--deepspeed", "--deepspeed_config", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "zero_optimization.stage is 1 but train.zero_stage=0" in err


def test_owned_keys_are_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "--deepspeed_config" in readme and "deepspeed_config.json" in readme
    assert all(key.split(" ")[0].split(".")[0] in readme for key in OWNED_KEYS)


@pytest.mark.parametrize("template", sorted(p.name for p in DS_CONFIG_DIR.glob("zero*.json")))
def test_every_shipped_zero_template_agrees_with_its_regime(template):
    stage = json.loads((DS_CONFIG_DIR / template).read_text())["zero_optimization"]["stage"]
    offload = "offload" in template
    cfg = load_config(None, [f"train.zero_stage={stage}", f"train.offload={str(offload).lower()}",
                             f"train.deepspeed_template={template}"])
    zero = build_ds_config(cfg, on_gpu=False)["zero_optimization"]
    assert zero["stage"] == stage and ("offload_param" in zero) == offload
