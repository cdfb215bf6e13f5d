"""Log lines name their node and rank; ranks other than 0 print only their own warnings."""
from __future__ import annotations

import logging

from ofa_ds.engine.logs import rank_handler, rank_tag


def test_rank_tag_names_node_and_rank():
    assert rank_tag({}) == "rank 0/1"
    assert rank_tag({"RANK": "3", "WORLD_SIZE": "8", "CROSS_RANK": "1"}) == "node 1 rank 3/8"
    assert rank_tag({"RANK": "5", "WORLD_SIZE": "8", "GROUP_RANK": "0"}) == "node 0 rank 5/8"  # torchrun


def test_only_rank_0_prints_shared_information():
    record = logging.LogRecord("ofa_ds.train", logging.INFO, __file__, 1, "global batch: %d", (16,), None)
    warning = logging.LogRecord("ofa_ds.data", logging.WARNING, __file__, 1, "skipping bad row", (), None)
    rank0 = rank_handler({"RANK": "0", "WORLD_SIZE": "2", "CROSS_RANK": "0"})
    rank1 = rank_handler({"RANK": "1", "WORLD_SIZE": "2", "CROSS_RANK": "0"})
    assert "[node 0 rank 0/2] ofa_ds.train INFO global batch: 16" in rank0.format(record)
    assert record.levelno >= rank0.level and record.levelno < rank1.level
    assert warning.levelno >= rank1.level and "[node 0 rank 1/2]" in rank1.format(warning)


class FakeWandb:
    """Stands in for the wandb package (not a dependency): records what the logger calls."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, data, step):
        self.calls.append(("log", data, step))

    def finish(self):
        self.calls.append(("finish",))


def _log_one_step(tmp_path, **kwargs):
    from ofa_ds.engine.metrics import MetricsLogger

    m = MetricsLogger(tmp_path, enabled=True, tensorboard=False, progress=False, total_steps=1, **kwargs)
    m.log_step(1, {"loss": 2.0, "lr": 1e-4, "samples_per_s": 3.0, "grad_norm": 0.5, "vl_loss": 1.5})
    m.log_eval(1, {"valid_loss": 1.0})
    m.close()


def test_wandb_logging_when_a_project_is_set(tmp_path, monkeypatch):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _log_one_step(tmp_path, wandb_project="ofa", run_config={"train": {"max_steps": 1}})
    init, step, evaluation, finish = fake.calls
    assert init[0] == "init" and init[1]["project"] == "ofa" and init[1]["config"] == {"train": {"max_steps": 1}}
    assert step == ("log", {"train/loss": 2.0, "train/lr": 1e-4, "train/grad_norm": 0.5,
                            "train/samples_per_s": 3.0, "train/vl_loss": 1.5}, 1)
    assert evaluation == ("log", {"eval/valid_loss": 1.0}, 1) and finish == ("finish",)


def test_wandb_is_not_imported_unless_set_and_missing_wandb_is_explained(tmp_path, monkeypatch):
    import sys

    import pytest

    monkeypatch.setitem(sys.modules, "wandb", None)  # any import of wandb now fails
    _log_one_step(tmp_path / "off")
    with pytest.raises(ValueError, match="pip install wandb"):
        _log_one_step(tmp_path / "on", wandb_project="ofa")
