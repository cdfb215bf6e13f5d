"""`ofa-ds pretrain` through the deepspeed launcher (CPU, gloo) in each parallel layout;
the losses equal the single-process run's (data parallel degree 1 everywhere, so the
global batch is the same)."""
from __future__ import annotations

import pytest

from ofa_ds.engine.trainer import Trainer
from tests.distributed.test_engine_launcher import free_port, read_losses
from tests.engine.helpers import engine_config, engine_overrides
from tests.helpers import child_env

pytestmark = pytest.mark.slow

SAME_MATH = {"model.dropout": 0.0, "model.encoder_drop_path_rate": 0.0, "model.decoder_drop_path_rate": 0.0,
             "data.sample_patch_num": "none", "train.max_steps": 2, "train.save_every": 2,
             "train.export_format": "ofa-ds"}

LAYOUTS = {
    "tp2": (2, {"parallel.tp": 2}),
    "zero3-offload-tp2": (2, {"parallel.tp": 2, "train.zero_stage": 3, "train.offload": True}),
    "pp2": (2, {"parallel.pp": 2, "train.zero_stage": 1}),
    "tp2-pp2": (4, {"parallel.tp": 2, "parallel.pp": 2, "train.zero_stage": 1}),
}


@pytest.fixture(scope="module")
def single_losses(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    trainer = Trainer(engine_config(sample_data, out, **SAME_MATH))
    losses = [h["loss"] for h in trainer.run()]
    trainer.export(out / "final")
    return losses, out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name, sample_data, tmp_path, single_losses):
    import os
    import subprocess
    import sys

    import torch

    from ofa_ds.model.ofa import OFAModel

    nproc, extra = LAYOUTS[name]
    out = tmp_path / name
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
           str(free_port()), "--module", "ofa_ds.train", "pretrain",
           *engine_overrides(sample_data, out, **SAME_MATH, **extra)]
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    expected, single_out = single_losses
    assert read_losses(out) == pytest.approx(expected, rel=2e-5)
    # The exported model is a plain single-device checkpoint with the real vocabulary size.
    exported = OFAModel.from_pretrained(out / "final")
    reference = OFAModel.from_pretrained(single_out / "final")
    assert exported.config.vocab_size == reference.config.vocab_size
    # Adam turns last-bit gradient differences of near-zero gradients into updates of up to
    # +-lr, so weights agree to ~2*lr*steps; a mis-gathered shard is off by the init scale.
    for (k, a), b in zip(exported.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=4e-3, msg=k)


def test_checkpoint_crosses_layouts(sample_data, tmp_path, single_losses):
    """A single-device checkpoint (exported by the 1-process run) loaded into a TP=2 x PP=2
    run gives the first-step loss that a 1-process run from the same checkpoint gives; the
    TP=2 x PP=2 run's own export loads back as a single-device model."""
    import os
    import subprocess
    import sys

    from ofa_ds.model.ofa import OFAModel

    _, single_out = single_losses
    init = {**SAME_MATH, "model.init_from": str(single_out / "final"), "train.max_steps": 1,
            "train.save_every": 1}
    expected = [h["loss"] for h in Trainer(engine_config(sample_data, tmp_path / "one", **init)).run()]
    out = tmp_path / "tp2pp2"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "4", "--master_port", str(free_port()),
           "--module", "ofa_ds.train", "pretrain",
           *engine_overrides(sample_data, out, **init, **LAYOUTS["tp2-pp2"][1])]
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert read_losses(out) == pytest.approx(expected, rel=2e-5)
    assert OFAModel.from_pretrained(out / "final").config.vocab_size == OFAModel.from_pretrained(
        single_out / "final").config.vocab_size
