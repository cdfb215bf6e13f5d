"""The task layer: registry, split layout, typed options, early file checks, evaluation."""
from __future__ import annotations

import json

import pytest

from ofa_ds.config.load import load_config
from ofa_ds.tasks import TASKS, task_class


def test_every_registered_task_imports_and_names_itself():
    for name in TASKS:
        assert task_class(name).name == name


def test_old_caption_fields_still_work_with_a_warning(tmp_path):
    f = tmp_path / "old.toml"
    f.write_text('[task]\nname = "caption"\n[data]\ncaption_train = "a.tsv"\ncaption_valid = "b.tsv"\n')
    with pytest.warns(DeprecationWarning, match="task.train"):
        cfg = load_config(f)
    assert (cfg.task.train, cfg.task.valid) == ("a.tsv", "b.tsv")


def test_unknown_task_and_unknown_option_are_refused():
    with pytest.raises(ValueError, match="unknown task.name"):
        load_config(None, ["task.name=nope"])
    with pytest.raises(ValueError, match="takes no"):
        load_config(None, ["task.name=pretrain", "task.options.beam=3"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['beam'\]"):
        load_config(None, ["task.name=caption", "task.options.beam=3"])


def test_a_missing_split_file_fails_before_the_model(sample_data, tmp_path, monkeypatch):
    from ofa_ds.engine import trainer as trainer_mod
    from tests.engine.helpers import engine_config

    monkeypatch.setattr(trainer_mod, "build_model", lambda *a, **k: pytest.fail("model built"))
    cfg = engine_config(sample_data, tmp_path, **{"task.name": "caption", "task.valid": "finetune/nope.tsv"})
    with pytest.raises(ValueError, match=r"task.valid: .*nope.tsv does not exist"):
        trainer_mod.Trainer(cfg)


def test_evaluate_command_writes_predictions_and_metrics(sample_data, tmp_path, capsys):
    """`ofa-ds evaluate` on a freshly initialised test-flavor model exported to disk."""
    from ofa_ds.cli import main
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel

    vocab = Vocabulary.from_dir(sample_data / "vocab")
    OFAModel(get_flavor("test", vocab_size=len(vocab))).save_pretrained(tmp_path / "model")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[task]\nname = "caption"\neval_max_len = 3\neval_beam = 2\n'
                   f'[task.options]\ncoco_toolkit = "none"\n'  # METEOR's JVM alone takes ~20 s
                   f'[data]\nroot = "{sample_data}"\npatch_image_size = 64\n')
    assert main(["evaluate", "--config", str(cfg), "--checkpoint", str(tmp_path / "model"),
                 "--split", "test", "--out", str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "test_predictions.jsonl").read_text().splitlines()
    n_test = sum(1 for _ in open(sample_data / "finetune/caption/test.tsv"))
    assert len(lines) == n_test and set(json.loads(lines[0])) == {"id", "prediction", "target"}
    metrics = json.loads((tmp_path / "out" / "eval_test.json").read_text())
    assert {"test_cider", "test_loss"} <= set(metrics) and metrics["rows"] == n_test
