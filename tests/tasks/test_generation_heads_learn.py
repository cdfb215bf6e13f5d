"""It learns: on the sample data at the `test` flavor, through the engine, a few dozen steps
each. Grounding beats its untrained Acc@0.5 / IoU, Gigaword its untrained ROUGE-L, and
caption SCST raises CIDEr-D over its cross-entropy (stage-1) start."""
from __future__ import annotations

import pytest
import torch

from tests.engine.helpers import engine_config


def _train(sample_data, out_dir, **overrides):
    from ofa_ds.engine.trainer import Trainer

    cfg = engine_config(sample_data, out_dir, **{"train.save_every": 0, "model.dropout": 0.0,
                                                 "model.encoder_drop_path_rate": 0.0,
                                                 "model.decoder_drop_path_rate": 0.0, **overrides})
    trainer = Trainer(cfg)

    def score(split="train"):
        return trainer.task.evaluate(trainer.engine.module, device=trainer.engine.device, split=split)

    return trainer, score


@pytest.mark.slow
def test_grounding_beats_untrained(sample_data, tmp_path, one_torch_thread):
    """Acc@0.5 on the 16 training rows (the sample's held-out rows are too few to generalise
    to): 0 untrained; 160 steps reach 0.69-0.81 over seeds (100 steps still 0, 140: 0.5)."""
    trainer, score = _train(sample_data, tmp_path, **{"task.name": "refcoco", "task.valid": "finetune/refcoco/train.tsv",
                                                       "task.label_smoothing": 0.1, "optim.lr": 1e-3,
                                                       "optim.warmup_ratio": 0.05, "train.max_steps": 160,
                                                       "task.eval_beam": 2})
    before = score("valid")
    trainer.run()
    after = score("valid")
    print("grounding before/after:", before, after)
    # the drawn boxes (predicted red, true green), also for a weak model's inverted boxes
    trainer.task.write_predictions([{"id": "0", "prediction": [0, 0, 1, 1]}], tmp_path / "results.json")
    assert (tmp_path / "results_boxes.png").stat().st_size > 0
    assert after["valid_acc"] >= before["valid_acc"] + 0.25, (before, after)
    assert after["valid_miou"] > before["valid_miou"] + 0.2 and after["valid_loss"] < before["valid_loss"], (before, after)


@pytest.mark.slow
def test_gigaword_beats_untrained(sample_data, tmp_path, one_torch_thread):
    trainer, score = _train(sample_data, tmp_path, **{"task.name": "gigaword", "task.valid": "finetune/gigaword/train.tsv",
                                                       "task.label_smoothing": 0.1, "optim.lr": 3e-3,
                                                       "train.max_steps": 30, "task.eval_beam": 2,
                                                       "data.max_tgt_length": 16})
    before = score("valid")
    trainer.run()
    after = score("valid")
    print("gigaword before/after:", before, after)
    assert after["valid_rougeL_f1"] > before["valid_rougeL_f1"] + 10, (before, after)


@pytest.mark.slow
def test_scst_raises_cider_over_its_stage1_start(sample_data, tmp_path, one_torch_thread):
    stage1, _ = _train(sample_data, tmp_path / "s1", **{"task.name": "caption", "optim.lr": 3e-3,
                                                         "train.max_steps": 20, "train.export_format": "ofa-ds"})
    stage1.run()
    start = stage1.export(tmp_path / "s1" / "final")
    trainer, score = _train(sample_data, tmp_path / "s2", **{
        "task.name": "caption_scst", "model.init_from": str(start), "task.valid": "finetune/caption/train.tsv",
        "optim.lr": 5e-4, "optim.warmup_ratio": 0.0, "train.max_steps": 12, "train.micro_batch": 4,
        "task.eval_max_len": 8, "task.options.scst_max_len": 8, "task.options.scst_beam": 4})
    before = score("valid")
    history = trainer.run()
    after = score("valid")
    print("scst before/after:", before, after)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert after["valid_cider"] > before["valid_cider"], (before, after)


@pytest.mark.parametrize("name", ["caption_scst", "refcoco", "gigaword", "image_gen"])
def test_shipped_configs_load(name):
    """The demo and OFA-recipe configs parse and type-check, options included."""
    from pathlib import Path

    from ofa_ds.config.load import load_config
    from ofa_ds.tasks import parse_options

    configs = Path(__file__).resolve().parents[2] / "launch" / "configs"
    for suffix in ("demo_cpu", "base", "large"):
        cfg = load_config(configs / f"{name}_{suffix}.toml")
        assert cfg.task.name == name
        parse_options(cfg)
