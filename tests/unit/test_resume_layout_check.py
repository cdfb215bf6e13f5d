"""``--resume`` in another layout: decided from the checkpoint's layout.json before any
process group exists; refused, naming the writer's layout and the fix, when the checkpoint
has no layout-free copy."""
from __future__ import annotations

import json

import pytest

from ofa_ds.config.load import load_config
from ofa_ds.engine import portable


def _run_dir(tmp_path, writer: dict):
    step = tmp_path / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002\n")
    (step / portable.LAYOUT_FILE).write_text(json.dumps(writer))
    return load_config(None, [f"train.out_dir={tmp_path}", "train.resume=true", "parallel.tp=1"])


WRITER = {"tp": 2, "pp": 1, "dp": 1, "world_size": 2, "zero_stage": 0}


def test_same_layout_uses_deepspeeds_files(tmp_path):
    cfg = _run_dir(tmp_path, {**WRITER, "tp": 1, "world_size": 1, "portable": False})
    assert portable.check_resume(cfg, world_size=1) == "same"


def test_other_layout_with_a_layout_free_copy_is_accepted(tmp_path):
    assert portable.check_resume(_run_dir(tmp_path, {**WRITER, "portable": True}), world_size=1) == "portable"


def test_other_layout_without_a_layout_free_copy_is_refused_with_the_fix(tmp_path):
    cfg = _run_dir(tmp_path, {**WRITER, "portable": False})
    with pytest.raises(ValueError) as err:
        portable.check_resume(cfg, world_size=1)
    message = str(err.value)
    assert "tp=2, pp=1, dp=1 (2 ranks), ZeRO-0" in message and "this run is tp=1" in message
    assert "parallel.tp=2 parallel.pp=1" in message and "on 2 ranks" in message


def test_moe_refuses_a_layout_change(tmp_path):
    cfg = _run_dir(tmp_path, {**WRITER, "portable": True})
    cfg.model.moe_layers = "encoder:1"
    with pytest.raises(ValueError, match="mixture-of-experts"):
        portable.check_resume(cfg, world_size=1)
