"""What the generation heads' tests add to ``tests/tasks/golden.py`` (the finetuning fixture
readers): collated ``net_input`` of a fixture batch and the golden model without dropout."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from tests.conftest import shared_dir
from tests.tasks.golden import FIXTURE, GOLDEN_MODEL, image_tensor
from tests.tasks.golden import task_json as task  # noqa: F401  (re-exported for the tests)

__all__ = ["GOLDEN_MODEL", "NO_DROPOUT", "data_file", "golden_model", "net_input", "root", "shared_dir", "task"]


def root() -> Path:
    return FIXTURE


def data_file(name: str) -> Path:
    return FIXTURE / "data" / name


def net_input(batch: dict) -> dict:
    """The collated ``net_input`` of a fixture batch, images rebuilt from their keys."""
    fields = batch["fields"]
    out = {}
    for k in batch["net_input_keys"]:
        f = fields[f"net_input.{k}"]
        if k == "patch_images":
            out[k] = torch.stack([image_tensor(r) for r in f["rows"]])
        else:
            dtype = {"int64": torch.long, "bool": torch.bool, "float32": torch.float32}[f["dtype"]]
            out[k] = torch.tensor(f["value"], dtype=dtype)
    return out


NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "encoder_drop_path_rate": 0.0,
              "decoder_drop_path_rate": 0.0, "resnet_drop_path_rate": 0.0}


@lru_cache(maxsize=1)
def golden_model():
    """The golden ofa_tiny in eval mode, with dropout and drop-path 0 (as the SCST stage's
    flags; the eval-mode results do not depend on them)."""
    from ofa_ds.model.ofa import OFAModel

    return OFAModel.from_pretrained(GOLDEN_MODEL, config_overrides=NO_DROPOUT).eval()
