"""`ofa-ds pretrain` through the `deepspeed` launcher with 2 CPU processes (gloo).

The 2-process data-parallel run (micro-batch 8 per rank) must give the losses of the
1-process run with the same global batch (micro-batch 8, 2 accumulation steps): the loss of a
step is normalised by the step's global token counts, and BatchNorm uses running statistics
(batch statistics would depend on how the batch is split).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ofa_ds.engine.trainer import Trainer
from tests.engine.helpers import engine_config, engine_overrides
from tests.helpers import child_env

pytestmark = pytest.mark.slow

SAME_MATH = {"model.dropout": 0.0, "model.encoder_drop_path_rate": 0.0, "model.decoder_drop_path_rate": 0.0,
             "model.freeze_batchnorm": True, "data.sample_patch_num": "none", "train.max_steps": 3,
             "train.save_every": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_losses(out_dir):
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_process_data_parallel_matches_one_process(sample_data, tmp_path):
    single = Trainer(engine_config(sample_data, tmp_path / "one", **SAME_MATH, **{"train.grad_accum": 2})).run()

    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           "--module", "ofa_ds.train", "pretrain", *engine_overrides(sample_data, out, **SAME_MATH)]
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = read_losses(out)
    assert len(two) == 3
    assert two == pytest.approx([h["loss"] for h in single], rel=1e-5)
    # Both ranks finished the checkpoint before `latest` moved.
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert {p.name for p in (out / "checkpoints" / tag).glob("ofa_rank*.pt")} == {"ofa_rank0.pt", "ofa_rank1.pt"}
