"""`launch/multi_node.sh` with a hostfile naming only this machine: 2 CPU processes, no ssh.

The same run checks what a user sees from a multi-process job: every log line is tagged with
its node and rank, information that all ranks share is printed once (by rank 0), the user's
DeepSpeed JSON is used and the resolved JSON written to the run directory, and the gradient
norm of ZeRO-0 fp32 is a number in strict-JSON metrics.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.test_engine_launcher import free_port
from tests.engine.helpers import engine_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_localhost_hostfile_runs_without_ssh(sample_data, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# this machine only\nlocalhost slots=2\n")
    # An ssh that fails loudly: the launch must not need it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\ntouch {tmp_path / 'ssh_was_called'}\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    user_ds = tmp_path / "my_ds.json"
    user_ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "zero_allow_untested_optimizer": True}))

    out = tmp_path / "run"
    overrides = engine_overrides(sample_data, out, **{"train.max_steps": 2, "train.save_every": 0,
                                                      "data.sample_patch_num": "none"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()),
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["bash", str(REPO / "launch" / "multi_node.sh"), str(hostfile), "pretrain",
           "--deepspeed_config", str(user_ds), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not (tmp_path / "ssh_was_called").exists()

    def refuse(name):
        raise ValueError(f"{name} in metrics.jsonl")

    rows = [json.loads(l, parse_constant=refuse) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    resolved = json.loads((out / "deepspeed_config.json").read_text())
    assert resolved["zero_allow_untested_optimizer"] is True and resolved["zero_optimization"]["stage"] == 0

    ours = [l for l in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d [\d:,]+ .*ofa_ds\.\S+ (INFO|WARNING) ", l)]
    assert ours and all(re.search(r"\[node 0 rank [01]/2\]", l) for l in ours), ours[:5]
    # Shared information once: the setup lines come from rank 0 only.
    setup = [l for l in ours if "global batch:" in l]
    assert len(setup) == 1 and "[node 0 rank 0/2]" in setup[0]
