"""The DeepSpeed JSON, generated from the training config and a DeepSpeed template.

The template is a ``ds_configs/`` file chosen from ``train.zero_stage``/``offload``, or the
user's own JSON (``train.deepspeed_template=FILE``, or ``--deepspeed_config FILE`` as with
DeepSpeed's own scripts). ofa-ds sets the keys in ``OWNED_KEYS`` from its config; every other
key of the template reaches DeepSpeed untouched. A template that sets an owned key to another
value than the config is refused, so the config (what is logged) is what runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from ofa_ds.config.schema import TrainConfig

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"

# DeepSpeed key -> where ofa-ds takes its value from.
OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum (x groups per batch under pipeline parallelism)",
    "train_batch_size": "train.micro_batch x gradient_accumulation_steps x data-parallel size",
    "gradient_clipping": "optim.clip_norm",
    "zero_optimization.stage": "train.zero_stage",
    "zero_optimization.offload_param / offload_optimizer": "train.offload",
    "bf16.enabled / fp16.enabled": "train.precision",
    "optimizer": "optim.* and train.optimizer",
    "scheduler": "optim.warmup_ratio and optim.end_lr (ofa-ds's schedule object)",
    "steps_per_print / wall_clock_breakdown": "ofa-ds's own logging",
}


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed template that cannot be used with this config (a user mistake, no traceback)."""


def _read_template(name: str) -> tuple[dict, Path]:
    path = Path(name)
    if not path.is_file():
        path = DS_CONFIG_DIR / name
    if not path.is_file():
        raise DeepSpeedConfigError(f"DeepSpeed config {name!r} not found (neither a file nor in {DS_CONFIG_DIR})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(f"DeepSpeed config {path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {path}: expected a JSON object at the top")
    return data, path


def _offloaded(zero: dict) -> bool:
    return any((zero.get(k) or {}).get("device", "none") not in ("none", None)
               for k in ("offload_optimizer", "offload_param"))


def check_template(ds: dict, cfg: TrainConfig, source: str, *, ds_gas: int, dp_size: int | None) -> None:
    """Refuse a template whose owned keys disagree with the config (all disagreements at once)."""
    t, o = cfg.train, cfg.optim
    zero = ds.get("zero_optimization") or {}
    wrong = []

    def differs(key, got, want, field):
        if got is not None and got != want:
            wrong.append(f"{key} is {got!r} but {field}={want!r}")

    differs("zero_optimization.stage", zero.get("stage"), t.zero_stage, "train.zero_stage")
    if _offloaded(zero) and not t.offload:
        wrong.append("zero_optimization offloads to CPU but train.offload=false")
    for precision in ("bf16", "fp16"):
        enabled = (ds.get(precision) or {}).get("enabled")
        if enabled is not None and bool(enabled) != (t.precision == precision):
            wrong.append(f"{precision}.enabled is {str(bool(enabled)).lower()} but train.precision={t.precision!r}")
    differs("train_micro_batch_size_per_gpu", ds.get("train_micro_batch_size_per_gpu"), t.micro_batch,
            "train.micro_batch")
    differs("gradient_accumulation_steps", ds.get("gradient_accumulation_steps"), ds_gas, "train.grad_accum")
    if dp_size is not None:
        differs("train_batch_size", ds.get("train_batch_size"), t.micro_batch * ds_gas * dp_size,
                f"train.micro_batch x grad_accum x data-parallel {dp_size}")
    if ds.get("gradient_clipping") is not None and float(ds["gradient_clipping"]) != float(o.clip_norm):
        wrong.append(f"gradient_clipping is {ds['gradient_clipping']!r} but optim.clip_norm={o.clip_norm!r}")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            wrong.append(f"has {key!r}, which ofa-ds builds from {OWNED_KEYS[key]}: remove it")
    if wrong:
        raise DeepSpeedConfigError(f"DeepSpeed config {source} disagrees with the training config: " + "; ".join(wrong)
                         + ". Set the values in the ofa-ds config (it fills these keys in), or make them agree.")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(cfg: TrainConfig, *, on_gpu: bool, pipeline_groups: int = 1,
                    dp_size: int | None = None) -> dict:
    """``pipeline_groups``: groups per batch; under PP each is one pipeline micro-batch.
    ``dp_size``: data-parallel ranks, to check a template's ``train_batch_size``."""
    t, o = cfg.train, cfg.optim
    template = t.deepspeed_template
    if template == "auto":
        template = "zero3_offload.json" if t.offload else f"zero{t.zero_stage}.json"
    ds, source = _read_template(template)
    ds_gas = t.grad_accum * (pipeline_groups if cfg.parallel.pp > 1 else 1)
    check_template(ds, cfg, str(source), ds_gas=ds_gas, dp_size=dp_size)
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = t.zero_stage
    if t.offload and not _offloaded(zero):
        zero.update(offload_param={"device": "cpu"}, offload_optimizer={"device": "cpu"})
    if t.precision in ("bf16", "fp16"):
        if t.precision == "fp16" and not on_gpu:
            raise ValueError("train.precision=fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32")
        # The template's own settings of that precision (e.g. a loss-scale window) win.
        ds = _merge(_read_template(f"{t.precision}.json")[0], ds)
    ds.update({
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": ds_gas,
        "gradient_clipping": o.clip_norm,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    })
    p = cfg.parallel
    if p.pp > 1 and p.tp > 1:
        # Our stage-to-stage tuple holds several differentiable tensors; DeepSpeed's
        # partitioned send handles one.
        ds["pipeline"] = {**(ds.get("pipeline") or {}), "pipe_partitioned": False, "grad_partitioned": False}
    # The kernel registry picks the Adam (ofa_ds/kernels/optim.py): torch AdamW on CPU (no
    # JIT-compiled op), a fused one on GPU, DeepSpeedCPUAdam under ZeRO-Offload on GPU machines.
    from ofa_ds.kernels.optim import deepspeed_optimizer_config

    params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    ds.update(deepspeed_optimizer_config("cuda" if on_gpu else "cpu", t.offload, params, prefer=t.optimizer))
    return ds


def write_ds_config(ds: dict, out_dir: Path) -> Path:
    """The resolved JSON, as DeepSpeed got it, beside the run's config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "deepspeed_config.json"
    path.write_text(json.dumps(ds, indent=2, sort_keys=True) + "\n")
    return path
