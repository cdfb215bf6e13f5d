"""The DeepSpeed JSON, generated from the training config and a ``ds_configs/`` template."""
from __future__ import annotations

import json
from pathlib import Path

from ofa_ds.config.schema import TrainConfig

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def _read_template(name: str) -> dict:
    path = Path(name)
    if not path.is_file():
        path = DS_CONFIG_DIR / name
    if not path.is_file():
        raise ValueError(f"DeepSpeed template {name!r} not found (looked in {DS_CONFIG_DIR})")
    return json.loads(path.read_text())


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(cfg: TrainConfig, *, on_gpu: bool, pipeline_groups: int = 1) -> dict:
    """``pipeline_groups``: groups per batch; under PP each is one pipeline micro-batch."""
    t, o = cfg.train, cfg.optim
    template = t.deepspeed_template
    if template == "auto":
        template = "zero3_offload.json" if t.offload else f"zero{t.zero_stage}.json"
    ds = _read_template(template)
    if t.precision in ("bf16", "fp16"):
        if t.precision == "fp16" and not on_gpu:
            raise ValueError("train.precision=fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32")
        ds = _merge(ds, _read_template(f"{t.precision}.json"))
    ds.update({
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": o.clip_norm,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    })
    p = cfg.parallel
    if p.pp > 1:
        ds["gradient_accumulation_steps"] = t.grad_accum * pipeline_groups
        if p.tp > 1:
            # Our stage-to-stage tuple holds several differentiable tensors; DeepSpeed's
            # partitioned send handles one.
            ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    # The kernel registry picks the Adam (ofa_ds/kernels/optim.py): torch AdamW on CPU (no
    # JIT-compiled op), a fused one on GPU, DeepSpeedCPUAdam under ZeRO-Offload on GPU machines.
    from ofa_ds.kernels.optim import deepspeed_optimizer_config

    params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    ds.update(deepspeed_optimizer_config("cuda" if on_gpu else "cpu", t.offload, params, prefer=t.optimizer))
    return ds
