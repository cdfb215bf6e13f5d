"""A full disk while saving: a message with the path and the step, the partial step_N directory
removed, the previous checkpoint intact, and a non-zero exit from the CLI."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple

import pytest
import torch

from ofa_ds.engine import checkpoint as ckpt


class FileEngine:
    """Stands in for a DeepSpeed engine: ``save_checkpoint`` writes one ``megabytes`` file, in
    DeepSpeed's (legacy) format or torch's zip format."""

    device = torch.device("cpu")

    def __init__(self, megabytes: float, zipfile: bool = False):
        self.numel, self.zipfile = int(megabytes * (1 << 20) / 4), zipfile

    def save_checkpoint(self, save_dir, tag, save_latest):
        path = f"{save_dir}/{tag}"
        os.makedirs(path, exist_ok=True)
        torch.save({"module": torch.ones(self.numel)}, f"{path}/mp_rank_00_model_states.pt",
                   _use_new_zipfile_serialization=self.zipfile)


def save(engine, ckpt_dir, step):
    return ckpt.save(engine, ckpt_dir, step, {"data": {}}, rank=0, keep_last=3)


def assert_full_disk_handled(ckpt_dir, err):
    message = str(err.value)
    assert f"no space left on {ckpt_dir} while saving step 4" in message
    assert "the previous checkpoint step_00000002 is intact (the partial step_00000004 was removed)" in message
    assert not (ckpt_dir / "step_00000004").exists()
    assert ckpt.read_latest(ckpt_dir) == "step_00000002"
    state = torch.load(ckpt_dir / "step_00000002" / "ofa_rank0.pt", weights_only=False)
    assert state["step"] == 2
    assert (ckpt_dir / "step_00000002" / "mp_rank_00_model_states.pt").stat().st_size > 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB tmpfs (needs mount rights, e.g. root); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    # a failed zip write can leave its file open until collected: detach lazily then
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("zipfile", [False, True], ids=["deepspeed-format-ENOSPC", "zip-inline-container"])
def test_a_real_full_disk(small_disk, zipfile):
    ckpt_dir = small_disk / "checkpoints"
    save(FileEngine(1.0, zipfile), ckpt_dir, 2)
    with pytest.raises(ckpt.CheckpointSaveError) as err:
        save(FileEngine(2.5, zipfile), ckpt_dir, 4)
    assert_full_disk_handled(ckpt_dir, err)


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
], ids=["ENOSPC", "inline_container"])
def test_a_simulated_full_disk(tmp_path, monkeypatch, failure):
    ckpt_dir = tmp_path / "checkpoints"
    save(FileEngine(0.01), ckpt_dir, 2)
    real_save = torch.save

    def full_disk_save(obj, path, *a, **k):
        if "step_00000004" in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")  # what a full disk leaves behind
            raise failure
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage(1 << 30, 1 << 30, 4096))
    with pytest.raises(ckpt.CheckpointSaveError) as err:
        save(FileEngine(0.01), ckpt_dir, 4)
    monkeypatch.setattr(torch, "save", real_save)
    assert_full_disk_handled(ckpt_dir, err)


def test_another_write_failure_is_named_as_such(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    monkeypatch.setattr(FileEngine, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(ckpt.CheckpointSaveError, match=r"could not save step 2 to .*; there is no earlier "
                                                       r"checkpoint .*PermissionError"):
        save(FileEngine(0.01), ckpt_dir, 2)
    assert not (ckpt_dir / "step_00000002").exists() and ckpt.read_latest(ckpt_dir) is None


def test_the_cli_exits_non_zero_with_the_message(monkeypatch, capsys):
    from ofa_ds import train
    from ofa_ds.engine import trainer as trainer_mod

    class FailingTrainer:
        rank = 1  # skip dump_config

        def __init__(self, cfg):
            pass

        def run(self):
            raise ckpt.CheckpointSaveError("no space left on /x while saving step 4; the previous checkpoint "
                                           "step_00000002 is intact")

    monkeypatch.setattr(trainer_mod, "Trainer", FailingTrainer)
    assert train.pretrain_main(["train.max_steps=4"]) == 1
    assert "ofa-ds pretrain: error: no space left on /x while saving step 4" in capsys.readouterr().err
