"""--resume never runs code from a checkpoint: ofa-ds's own files and DeepSpeed's are read with
weights_only=True and an allow-list; train.trust_checkpoint_pickle is the one opt-out."""
from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

from ofa_ds.engine import checkpoint as ckpt
from ofa_ds.engine.safe_load import UnsafeCheckpointError
from ofa_ds.engine.trainer import Trainer
from tests.engine.helpers import engine_config

pytestmark = pytest.mark.slow

TAG = "step_00000001"


class TouchOnLoad:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def trained(sample_data, tmp_path_factory):
    """A ZeRO-2 engine and its checkpoint (ZeRO-2 writes DeepSpeed's optimizer partition file,
    with its loss-scaler, stage and fragment records)."""
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(engine_config(sample_data, out, **{"train.max_steps": 1, "train.save_every": 1,
                                                         "train.zero_stage": 2}))
    trainer.run()
    return trainer, out / "checkpoints"


def crafted_copy(src, dst, file_name, marker):
    shutil.copytree(src, dst)
    torch.save({"step": 1, "payload": TouchOnLoad(marker)}, dst / TAG / file_name)
    return dst


def test_a_genuine_checkpoint_loads_safely(trained):
    trainer, ckpt_dir = trained
    ours = ckpt.load(trainer.engine, ckpt_dir, rank=0, world_size=1)
    assert ours["step"] == 1 and "data" in ours and "numpy" in ours["rng"]


@pytest.mark.parametrize("file_name", ["ofa_rank0.pt", "mp_rank_00_model_states.pt",
                                       "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_crafted_pickle_is_refused_without_running(trained, tmp_path, file_name):
    trainer, ckpt_dir = trained
    marker = tmp_path / "pwned"
    crafted = crafted_copy(ckpt_dir, tmp_path / "checkpoints", file_name, marker)
    with pytest.raises(UnsafeCheckpointError, match=f"{file_name}: refused to load") as info:
        ckpt.load(trainer.engine, crafted, rank=0, world_size=1)
    assert "Unsupported global" in str(info.value) and "train.trust_checkpoint_pickle=true" in str(info.value)
    assert not marker.exists()


def test_the_opt_out_loads_full_pickle(trained, tmp_path):
    """The crafted file really runs code when unpickled: trust_checkpoint_pickle is the only way in."""
    trainer, ckpt_dir = trained
    marker = tmp_path / "pwned"
    crafted = crafted_copy(ckpt_dir, tmp_path / "checkpoints", "ofa_rank0.pt", marker)
    ckpt.load(trainer.engine, crafted, rank=0, world_size=1, trusted=True)
    assert marker.exists()
