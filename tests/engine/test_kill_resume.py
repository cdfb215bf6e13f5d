"""kill -9 in the middle of a run, then ``--resume``: the losses and the final weights are
bitwise those of an uninterrupted run, with DataLoader workers, ZeRO-2, dropout, drop-path
and patch sampling on (issue 15 item 1: the new loader iterator consumes a draw from the
global RNG, so patch sampling has its own per-step generator)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ofa_ds.engine.trainer import Trainer
from tests.engine.helpers import engine_config, engine_overrides
from tests.helpers import child_env

pytestmark = pytest.mark.slow

RUN = {"data.num_workers": 2, "train.zero_stage": 2, "train.max_steps": 4, "train.save_every": 2,
       "train.export_format": "ofa-ds"}


def _losses_by_step(out_dir) -> dict[int, float]:
    """The last record of each step (a resumed run replays the steps after the checkpoint)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _command(sample_data, out, *extra):
    return [sys.executable, "-m", "ofa_ds.train", "pretrain", *engine_overrides(sample_data, out, **RUN), *extra]


def test_kill9_with_workers_and_zero2_resumes_bitwise(sample_data, tmp_path):
    from ofa_ds.model.ofa import OFAModel

    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(sample_data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stderr.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    done = subprocess.run(_command(sample_data, out, "--resume"), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses' setting: same kernels, same summation order
    try:
        reference = Trainer(engine_config(sample_data, tmp_path / "whole", **RUN))
        expected = {h["step"]: h["loss"] for h in reference.run()}
        reference.export(tmp_path / "whole" / "final")
    finally:
        torch.set_num_threads(threads)

    assert _losses_by_step(out) == expected, f"killed after {killed_at}"
    got = OFAModel.from_pretrained(out / "final").state_dict()
    want = OFAModel.from_pretrained(tmp_path / "whole" / "final").state_dict()
    assert got.keys() == want.keys()
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differing, f"{len(differing)} tensors differ after resuming from {killed_at}, e.g. {differing[:3]}"
