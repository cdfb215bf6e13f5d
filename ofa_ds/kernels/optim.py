"""Which Adam implementation the engine asks DeepSpeed for.

``optimizer_choice(device_type, offload)`` returns a name and the DeepSpeed ``optimizer``
config section. DeepSpeed picks the class from that section (``runtime/engine.py``,
``get_optimizer_configuration``): ``"torch_adam": true`` gives ``torch.optim.AdamW`` with the
remaining params passed through (so ``"fused": true`` reaches it); otherwise ZeRO-Offload
gives ``DeepSpeedCPUAdam`` and everything else DeepSpeed's ``FusedAdam``.

| situation                         | choice                | why                                           |
|-----------------------------------|-----------------------|-----------------------------------------------|
| optimizer offloaded, CUDA machine | deepspeed_cpu_adam    | the only fast CPU Adam; JIT-built with gcc    |
| optimizer offloaded, CPU machine  | torch_adamw           | no 6-minute C++ build (CPU CI and demos)      |
| CUDA, DeepSpeed fused_adam built  | deepspeed_fused_adam  | multi-tensor CUDA Adam, already compiled      |
| CUDA otherwise                    | torch_fused_adamw     | same single-kernel update, no nvcc JIT build  |
| CPU, no offload                   | torch_adamw           | foreach AdamW; no C++ build (CPU CI)          |

All of them are AdamW with decoupled weight decay. (fairseq's Adam adds eps to the
uncorrected sqrt(v); that difference is the engine's business, not the kernel choice.)
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

CHOICES = ("deepspeed_cpu_adam", "deepspeed_fused_adam", "torch_fused_adamw", "torch_adamw")


def _deepspeed_fused_adam_prebuilt() -> bool:
    try:
        from deepspeed.git_version_info import installed_ops
    except Exception:  # DeepSpeed missing or broken: the torch optimizers still work
        return False
    return bool(installed_ops.get("fused_adam", False))


def explain_optimizer_choice(device_type: str, offload: bool, prefer: str = "auto") -> tuple[str, str]:
    """(choice, reason)."""
    if prefer != "auto":
        if prefer not in CHOICES:
            raise ValueError(f"unknown optimizer {prefer!r}; choose from {['auto', *CHOICES]}")
        if offload and prefer not in ("deepspeed_cpu_adam", "torch_adamw"):
            raise ValueError(f"{prefer} cannot run with the optimizer offloaded to CPU; use deepspeed_cpu_adam "
                             "or torch_adamw")
        if prefer in ("deepspeed_fused_adam", "torch_fused_adamw") and device_type != "cuda":
            raise ValueError(f"{prefer} needs CUDA; the model is on {device_type}")
        return prefer, "set explicitly"
    if offload and device_type == "cuda":
        return "deepspeed_cpu_adam", "optimizer state offloaded to CPU (ZeRO-Offload)"
    if offload:
        return "torch_adamw", "offload on a CPU-only machine: torch AdamW avoids the cpu_adam C++ build"
    if device_type == "cuda":
        if _deepspeed_fused_adam_prebuilt():
            return "deepspeed_fused_adam", "DeepSpeed was installed with fused_adam prebuilt"
        return "torch_fused_adamw", "CUDA; DeepSpeed's fused_adam is not prebuilt (avoids an nvcc JIT build)"
    return "torch_adamw", f"{device_type} without offload; avoids DeepSpeed's C++ JIT builds"


def optimizer_choice(device_type: str, offload: bool, params: dict | None = None,
                     prefer: str = "auto") -> tuple[str, dict]:
    """(name, DeepSpeed ``optimizer`` config section). ``params``: lr, betas, eps, weight_decay."""
    name, reason = explain_optimizer_choice(device_type, offload, prefer)
    logger.info("optimizer: %s (%s)", name, reason)
    section_params = dict(params or {})
    if name == "torch_fused_adamw":
        section_params.update(torch_adam=True, fused=True)
    elif name == "torch_adamw":
        section_params.update(torch_adam=True)
    return name, {"type": "AdamW", "params": section_params}


def deepspeed_optimizer_config(device_type: str, offload: bool, params: dict, prefer: str = "auto") -> dict:
    """The DeepSpeed config keys for the chosen optimizer (``optimizer``, and the switch that
    lets ZeRO-Offload use a torch optimizer)."""
    name, section = optimizer_choice(device_type, offload, params, prefer)
    out = {"optimizer": section}
    if offload and name.startswith("torch"):
        out["zero_force_ds_cpu_optimizer"] = False
    return out
