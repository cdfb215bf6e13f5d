"""Reading the finetuning golden fixture (../shared/fixtures/ofa_finetune_golden; see its README)."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tests.conftest import shared_dir

FIXTURE = shared_dir() / "fixtures" / "ofa_finetune_golden"
GOLDEN_MODEL = shared_dir() / "fixtures" / "ofa_golden" / "ofa_tiny_golden.pt"
BPE_DIR = shared_dir() / "ofa_bpe"


@lru_cache(maxsize=None)
def task_json(name: str) -> dict:
    return json.loads((FIXTURE / "tasks" / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def _meta() -> dict:
    return json.loads((FIXTURE / "meta.json").read_text())


def image_tensor(key: str) -> torch.Tensor:
    """OFA's float32 image tensor, rebuilt as the README says (hash checked)."""
    from PIL import Image

    info = _meta()["images"][key]
    u8 = np.asarray(Image.open(FIXTURE / info["png"]).convert("RGB")).transpose(2, 0, 1).copy()
    mean = torch.tensor(info["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(info["std"], dtype=torch.float32).view(3, 1, 1)
    t = torch.from_numpy(u8).float().div(255).sub(mean).div(std)
    if info["overlay"]:
        ov = info["overlay"]
        y0, y1, x0, x1 = ov["y0y1x0x1"]
        t[:, y0:y1, x0:x1] = torch.from_numpy(np.load(FIXTURE / "overlays.npz")[ov["npz_key"]])
    assert hashlib.sha256(t.numpy().tobytes()).hexdigest() == info["sha256_f32"]
    return t


def mask_rows(mask_BTV_or_TV: torch.Tensor) -> list:
    """A [T, V] bool mask in the fixture's row format: [] / "all" / sorted allowed ids."""
    out = []
    for row in mask_BTV_or_TV:
        if bool(row.all()):
            out.append("all")
        else:
            out.append(row.nonzero().flatten().tolist())
    return out


def rows_of(constraint_rows) -> list:
    return ["all" if r is None else sorted(r) for r in constraint_rows]


def golden_config(tmp_path: Path, task: str, **overrides):
    from ofa_ds.config.load import load_config

    base = {"task.name": task, "data.root": str(FIXTURE), "data.vocab_dir": str(BPE_DIR),
            "model.flavor": "tiny", "train.out_dir": str(tmp_path), "data.patch_image_size": 480}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@lru_cache(maxsize=None)
def golden_model():
    from ofa_ds.model.ofa import OFAModel

    return OFAModel.from_pretrained(GOLDEN_MODEL).eval()


@lru_cache(maxsize=None)
def ofa_vocab():
    from ofa_ds.data.vocab import Vocabulary

    return Vocabulary.from_dir(BPE_DIR)
