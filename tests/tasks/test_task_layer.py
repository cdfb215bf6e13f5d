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


def test_bad_vqa_rows_are_named_counted_and_skipped_or_fatal_when_strict(sample_data, tmp_path):
    from ofa_ds.data.bad_rows import BadRow
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.tasks import build_task

    good = (sample_data / "finetune/vqa/train.tsv").read_text().splitlines()[:4]
    cols = good[0].split("\t")
    bad = ["\t".join(cols[:5]),                                          # a missing column
           "\t".join(cols[:2] + ["   "] + cols[3:]),                    # an empty question
           "\t".join(cols[:3] + ["1.0|!+zebra crossing"] + cols[4:]),     # not a candidate
           "\t".join(cols[:3] + ["high|!+yes"] + cols[4:])]               # confidence not a number
    (tmp_path / "train.tsv").write_text("\n".join(good + bad) + "\n")
    vocab = Vocabulary.from_dir(sample_data / "vocab")

    def task(strict):
        cfg = load_config(None, ["task.name=vqa_gen", f"data.root={sample_data}", "data.patch_image_size=32",
                                 f"task.train={tmp_path / 'train.tsv'}", f"data.strict={strict}", "train.micro_batch=4"])
        return build_task(cfg, vocab)

    t = task(False)
    batches = list(t.build_train_loader(rank=0, world_size=1, seed=0))
    assert len(batches) == 2 and all(b["nsentences"] == 4 for b in batches)
    counts = t.policy.summary(0)[str(tmp_path / "train.tsv")]  # epoch 0 holds every bad row once
    assert counts == {"wrong column count": 1, "empty question": 1, "answer not in the candidate set": 1,
                      "confidence is not a number": 1}
    t = task(True)
    with pytest.raises(BadRow, match=r"train.tsv: row [4-7]"):
        list(t.build_train_loader(rank=0, world_size=1, seed=0))


def test_a_run_directory_resolves_to_its_exported_model(tmp_path):
    from ofa_ds.tasks.evaluation import resolve_checkpoint

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.json").write_text("{}")  # the training config, not a model
    (run / "best" / "model.safetensors").write_bytes(b"")
    assert resolve_checkpoint(str(run)) == run / "best"
    assert resolve_checkpoint(str(run / "best")) == run / "best"
