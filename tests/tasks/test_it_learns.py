"""Each understanding head, finetuned through the engine from one short pretraining, beats its
untrained score on its own valid split (the sample data; `test` flavor, 64 px, a few dozen steps)."""
from __future__ import annotations

import json

import pytest

from ofa_ds.engine.trainer import Trainer
from tests.engine.helpers import engine_config

pytestmark = pytest.mark.slow

TASKS = {  # task -> (metric, overrides)
    "vqa_gen": ("vqa_score", {}),
    "snli_ve": ("snli_score", {}),
    "sst2": ("acc", {}),
    # 18 colour x shape classes: it must learn the image, not an answer prior; a lower lr, and the
    # best of two evaluations (the best-checkpoint rule).
    "image_classify": ("accuracy", {"task.options.train_augment": "false", "optim.lr": 1e-3, "task.eval_every": 10,
                                    "train.max_steps": 40}),
}


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    from preprocessing.make_sample_data import main as make_sample_data

    root = tmp_path_factory.mktemp("learn_data")
    assert make_sample_data([str(root), "--vl-rows", "16", "--text-rows", "8", "--image-rows", "8",
                             "--detection-rows", "8", "--finetune-rows", "64", "--code-image-size", "32"]) == 0
    return root


@pytest.fixture(scope="module")
def pretrained(learn_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    cfg = engine_config(learn_data, out, **{"train.max_steps": 4, "train.save_every": 0,
                                            "train.export_format": "ofa-ds"})
    trainer = Trainer(cfg)
    trainer.run()
    return trainer.export(out / "final")


@pytest.mark.parametrize("task", list(TASKS))
def test_finetuning_beats_the_untrained_score(task, learn_data, pretrained, tmp_path):
    metric, extra = TASKS[task]
    cfg = engine_config(learn_data, tmp_path, **{
        "task.name": task, "model.init_from": str(pretrained), "train.max_steps": 20, "train.save_every": 0,
        "task.eval_every": 20, "task.eval_batch": 16, "optim.lr": 2e-3, "optim.warmup_ratio": 0.1,
        "model.dropout": 0.0, "model.encoder_drop_path_rate": 0.0, "model.decoder_drop_path_rate": 0.0,
        **extra})
    trainer = Trainer(cfg)
    before = trainer.validate()[f"valid_{metric}"]
    trainer.run()
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    after = best[f"valid_{metric}"]
    print(f"\nIT-LEARNS {task}: valid {metric} {before:.4f} -> {after:.4f}")
    assert after > before
