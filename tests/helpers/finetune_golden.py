"""Readers for the finetuning golden fixture (shared/fixtures/ofa_finetune_golden; see its
README): task files, OFA's image tensors rebuilt bit-exactly, and collated batches."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.conftest import shared_dir


def root() -> Path:
    return shared_dir() / "fixtures" / "ofa_finetune_golden"


@lru_cache(maxsize=None)
def task(name: str) -> dict:
    return json.loads((root() / "tasks" / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def _meta() -> dict:
    return json.loads((root() / "meta.json").read_text())


def image(key: str) -> torch.Tensor:
    """OFA's float32 patch_image for an image key (README, Conventions)."""
    info = _meta()["images"][key]
    u8 = np.asarray(Image.open(root() / info["png"]).convert("RGB")).transpose(2, 0, 1).copy()
    mean = torch.tensor(info["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(info["std"], dtype=torch.float32).view(3, 1, 1)
    return torch.from_numpy(u8).float().div(255).sub(mean).div(std)


def sha256_f32(t: torch.Tensor) -> str:
    return hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def batch_tensor(field: dict) -> torch.Tensor:
    dtype = {"int64": torch.long, "bool": torch.bool, "float32": torch.float32}[field["dtype"]]
    return torch.tensor(field["value"], dtype=dtype)


def net_input(batch: dict) -> dict:
    """The collated ``net_input`` of a fixture batch, images rebuilt from their keys."""
    fields = batch["fields"]
    out = {}
    for k in batch["net_input_keys"]:
        f = fields[f"net_input.{k}"]
        if k == "patch_images":
            imgs = torch.stack([image(r) for r in f["rows"]])
            assert sha256_f32(imgs) == f["sha256_f32"]
            out[k] = imgs
        else:
            out[k] = batch_tensor(f)
    return out


NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "encoder_drop_path_rate": 0.0,
              "decoder_drop_path_rate": 0.0, "resnet_drop_path_rate": 0.0}


@lru_cache(maxsize=1)
def golden_model():
    """The golden ofa_tiny in eval mode, with dropout and drop-path 0 (as the SCST stage's
    flags; the eval-mode results do not depend on them)."""
    from ofa_ds.model.ofa import OFAModel

    path = shared_dir() / "fixtures" / "ofa_golden" / "ofa_tiny_golden.pt"
    return OFAModel.from_pretrained(path, config_overrides=NO_DROPOUT).eval()


def data_file(name: str) -> Path:
    return root() / "data" / name
