"""Small training configs for engine tests: the `test` flavor on the tiny sample data."""
from __future__ import annotations

from pathlib import Path

from ofa_ds.config.load import load_config


def engine_overrides(sample_data: Path, out_dir: Path, **extra) -> list[str]:
    base = {
        "model.flavor": "test", "model.dropout": 0.1, "model.encoder_drop_path_rate": 0.1,
        "model.decoder_drop_path_rate": 0.1,
        "data.root": str(sample_data), "data.patch_image_size": 64, "data.code_image_size": 32,
        "data.sample_patch_num": 8,
        "optim.lr": 1e-3, "optim.warmup_ratio": 0.25,
        "train.micro_batch": 8, "train.max_steps": 4, "train.save_every": 2, "train.out_dir": str(out_dir),
        "train.progress_bar": False, "train.tensorboard": False, "train.export_format": "none",
        "train.image_log_every": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def engine_config(sample_data: Path, out_dir: Path, **extra):
    return load_config(None, engine_overrides(sample_data, out_dir, **extra))
