"""Reading and writing OFA weights in three formats.

* ``fairseq``: a released OFA ``.pt`` (``cfg['model']`` is an argparse Namespace).
* ``hf``: the OFA-HF layout, a directory with ``config.json`` and ``pytorch_model.bin``
  or ``model.safetensors``.
* ``ofa-ds``: a directory with ``ofa_config.json`` and ``model.safetensors``.
* ``training``: a mid-run checkpoint ``<out>/checkpoints/step_N`` (read only), through its
  layout-free copy ``portable/`` (``ofa_ds/engine/portable.py``), whatever the writer's
  TP/PP/DP/ZeRO layout.

Loading is strict: a missing or unexpected key is an error that lists them. The only
keys that may be absent are the deterministic buffers (bucket tables, code positions,
``version``), which we compute, and check when present.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ofa_ds.model import state_dict_adapter as sda
from ofa_ds.model.config import OFAConfig

OURS_CONFIG, OURS_WEIGHTS = "ofa_config.json", "model.safetensors"
HF_CONFIG, HF_BIN, HF_SAFETENSORS = "config.json", "pytorch_model.bin", "model.safetensors"
FORMATS = ("ofa-ds", "hf", "fairseq")


def detect_format(path: Path) -> str:
    if path.is_file():
        return "fairseq"
    if (path / OURS_CONFIG).is_file():
        return "ofa-ds"
    if (path / HF_CONFIG).is_file():
        return "hf"
    if (path / "portable" / "meta.pt").is_file():
        return "training"
    hint = ""
    if (path / "latest").is_file() or any(path.glob("ofa_rank*.pt")):
        hint = (" This is a training checkpoint without its layout-free copy (saved with "
                "train.layout_free_checkpoint=false, or by an older ofa-ds): resume it in its own layout "
                "and export from there")
    raise ValueError(f"{path}: not an OFA checkpoint (expected a fairseq .pt file, or a directory "
                     f"with {OURS_CONFIG} (ofa-ds), {HF_CONFIG} (OFA-HF) or portable/ (a training "
                     f"checkpoint step_N)).{hint}")


def load_fairseq_file(path: Path) -> dict:
    """``torch.load`` with weights_only, allowing only argparse.Namespace beyond tensors."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, with torch's explanation
        raise ValueError(f"{path}: cannot be read safely as a fairseq checkpoint: {err}") from err


def _read_state_and_config(path: Path, fmt: str) -> tuple[dict, OFAConfig]:
    if fmt == "fairseq":
        ckpt = load_fairseq_file(path)
        if "model" not in ckpt:
            raise ValueError(f"{path}: no 'model' entry; keys are {sorted(ckpt)}")
        state = dict(ckpt["model"])
        return state, sda.config_from_fairseq(ckpt, state)
    if fmt == "training":
        from ofa_ds.engine import portable

        state = {**portable.merged_state(path, "param"), **portable.merged_state(path, "buffer")}
        return state, OFAConfig.from_dict(portable.read_meta(path)["model_config"])
    if fmt == "ofa-ds":
        from safetensors.torch import load_file

        config = OFAConfig.from_dict(json.loads((path / OURS_CONFIG).read_text())["config"])
        return load_file(path / OURS_WEIGHTS), config
    hf = json.loads((path / HF_CONFIG).read_text())
    if (path / HF_SAFETENSORS).is_file():
        from safetensors.torch import load_file

        state = load_file(path / HF_SAFETENSORS)
    elif (path / HF_BIN).is_file():
        state = torch.load(path / HF_BIN, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: neither {HF_SAFETENSORS} nor {HF_BIN} found")
    state = sda.hf_to_fairseq_names(state)
    return state, sda.config_from_hf(hf, sda.tie_embeddings(state, str(path)))


def check_keys(expected: set[str], got: set[str], source: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        lines = [f"{source}: state dict does not match the model"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:40]))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:40]))
        raise ValueError("\n".join(lines))


def interpolate_image_positions(weight: torch.Tensor, bucket_size: int, from_grid: int,
                                to_grid: int) -> torch.Tensor:
    """Bilinearly resize the learned from_grid x from_grid block of the image position table
    to to_grid x to_grid (both placed top-left in the bucket_size grid; row 0 kept)."""
    if max(from_grid, to_grid) > bucket_size:
        raise ValueError(f"grid {max(from_grid, to_grid)} exceeds the {bucket_size}-wide position grid")
    d = weight.shape[1]
    grid = weight[1:].view(bucket_size, bucket_size, d)[:from_grid, :from_grid]
    resized = F.interpolate(grid.permute(2, 0, 1)[None].float(), size=(to_grid, to_grid),
                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0).to(weight.dtype)
    out = weight.clone()
    out[1:].view(bucket_size, bucket_size, d)[:to_grid, :to_grid] = resized
    return out


def pretrained_state(path, *, patch_image_size: int | None = None,
                     config_overrides: dict | None = None) -> tuple[dict, OFAConfig]:
    """A checkpoint's single-device state dict (our names, tied, derived buffers stripped,
    positions interpolated; the checkpoint's dtype) and its config, without building a model."""
    path = Path(path)
    fmt = detect_format(path)
    state, config = _read_state_and_config(path, fmt)
    state = sda.tie_embeddings(state, str(path))
    state = sda.strip_derived_buffers(state, config, str(path))
    if config_overrides:
        config = config.replace(**config_overrides)
    if patch_image_size is not None and patch_image_size != config.patch_image_size:
        name = "encoder.embed_image_positions.weight"
        state[name] = interpolate_image_positions(
            state[name], config.image_bucket_size, config.patch_image_size // 16, patch_image_size // 16)
        config = config.replace(patch_image_size=patch_image_size)
    return state, config


def load_pretrained(path, *, patch_image_size: int | None = None, dtype=torch.float32,
                    config_overrides: dict | None = None):
    """``dtype=None`` keeps the checkpoint's own dtype (that of its token embedding)."""
    from ofa_ds.model.ofa import OFAModel

    state, config = pretrained_state(path, patch_image_size=patch_image_size, config_overrides=config_overrides)
    if dtype is None:
        dtype = state[sda.TIED_NAMES[0]].dtype
    model = OFAModel(config, init_weights=False)
    check_keys(set(model.state_dict()), set(state), str(path))
    # Upcast fp16 checkpoints before the copy: load_state_dict would copy into fp32 anyway,
    # doing it here keeps one code path for every dtype.
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    return model.to(dtype)


# --- writing --------------------------------------------------------------------------
HF_WEIGHTS = ("bin", "safetensors", "both")


def _unique_state(model) -> dict:
    """State dict with each tied tensor under one name, contiguous, on CPU."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name in sda.TIED_NAMES[1:]:
        state.pop(name)
    return state


def _unshared(state: dict) -> dict:
    """safetensors refuses tensors that share memory: later names get their own copy."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def _follow_umask(path: Path) -> None:
    """safetensors creates files with mode 0600; give them the mode open() would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_unshared(state), path, metadata={"format": "pt"})
    _follow_umask(path)


def hf_state_dict(model) -> dict:
    """The state dict of OFA-HF's ``OFAModel``: HF names, all three tied embedding names, and
    the buffers it registers (bucket tables, ``image_position_idx`` with HF's 768-long tail),
    so that transformers reports no key as missing or newly initialised."""
    config: OFAConfig = model.config
    sda.hf_resnet_type(config)  # refuses a ResNet depth OFA-HF cannot build
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    emb = state[sda.TIED_NAMES[0]]
    for name in sda.TIED_NAMES:
        state[name] = emb
    state.update(sda.derived_buffers(config, code_tail=768))
    return sda.fairseq_to_hf_names(state)


def save_pretrained(model, path, format: str = "ofa-ds", *, hf_weights: str = "bin") -> Path:
    """``hf_weights`` (format hf): ``bin`` (pytorch_model.bin, what OFA-HF's transformers 4.18
    fork reads), ``safetensors`` (model.safetensors, transformers >= 4.30) or ``both``."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose from {FORMATS}")
    if hf_weights not in HF_WEIGHTS:
        raise ValueError(f"unknown hf_weights {hf_weights!r}; choose from {HF_WEIGHTS}")
    path = Path(path)
    config: OFAConfig = model.config
    if format == "fairseq":
        if path.suffix != ".pt":
            path = path / "checkpoint.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        emb = state[sda.TIED_NAMES[0]]
        for name in sda.TIED_NAMES:
            state[name] = emb  # one tensor under three names, as fairseq writes it
        state.update(sda.derived_buffers(config, code_tail=769))
        state["encoder.version"] = torch.tensor([3.0], dtype=emb.dtype)
        state["decoder.version"] = torch.tensor([3.0], dtype=emb.dtype)
        ckpt = {
            "args": None, "cfg": sda.fairseq_cfg(config), "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                                   "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
                                   "num_updates": 0}],
            "task_state": {},
            "extra_state": {"metrics": {}, "previous_training_time": 0.0, "val_loss": None,
                            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0,
                                               "shuffle": True}},
        }
        torch.save(ckpt, path)
        return path

    path.mkdir(parents=True, exist_ok=True)
    if format == "ofa-ds":
        _save_safetensors(_unique_state(model), path / OURS_WEIGHTS)
        (path / OURS_CONFIG).write_text(json.dumps({"format": "ofa-ds", "config": config.to_dict()},
                                                   indent=2) + "\n")
        return path
    state = hf_state_dict(model)
    for stale in (HF_BIN, HF_SAFETENSORS):  # a reader must not find weights of an older export
        (path / stale).unlink(missing_ok=True)
    if hf_weights in ("bin", "both"):
        torch.save(state, path / HF_BIN)  # tied names stay one tensor in the file
    if hf_weights in ("safetensors", "both"):
        _save_safetensors(state, path / HF_SAFETENSORS)
    dtype = str(state[sda.TIED_NAMES[0]].dtype).removeprefix("torch.")
    (path / HF_CONFIG).write_text(json.dumps(sda.hf_config(config, torch_dtype=dtype), indent=2) + "\n")
    return path
