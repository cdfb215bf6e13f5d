"""The global gradient norm of each optimizer step, in every DeepSpeed mode.

DeepSpeed's ZeRO, bf16 and fp16 optimizers report the (pre-clip) norm through
``engine.get_global_grad_norm()``. In ZeRO-0 fp32 it steps a plain torch optimizer,
clips with ``deepspeed.runtime.utils.clip_grad_norm_`` and throws the norm away, so the
engine reports ``None``. There we keep the norm that this very clipping computes (the
same function, parameters and model-parallel reduction), or, with clipping off, measure
it just before the optimizer step.
"""
from __future__ import annotations

import math


class GradNormTracker:
    def __init__(self, engine):
        self.engine = engine
        self._norm = math.nan
        self.reported_by_deepspeed = bool(engine.zero_optimization() or engine.bfloat16_enabled()
                                          or engine.fp16_enabled())
        if self.reported_by_deepspeed:
            return
        clip = engine.gradient_clipping()
        if clip > 0:
            # DeepSpeed calls engine.clip_fp32_gradients() in its step; an instance attribute
            # takes the method's place and does the same clipping, keeping the returned norm.
            engine.clip_fp32_gradients = lambda: self._measure(clip)
        else:
            engine.optimizer.register_step_pre_hook(lambda *_: self._measure(0.0))

    def _measure(self, clip: float) -> None:
        from deepspeed.runtime.utils import clip_grad_norm_, get_flattened_grad_norm

        params = [p for p in self.engine.module.parameters() if p.grad is not None]
        if not params:
            self._norm = math.nan
        elif clip > 0:
            self._norm = float(clip_grad_norm_(parameters=params, max_norm=clip, mpu=self.engine.mpu))
        else:
            norm = get_flattened_grad_norm(params, mpu=self.engine.mpu)
            self._norm = math.nan if norm == -1 else float(norm)  # -1: DeepSpeed's inf/nan marker

    def value(self) -> float:
        """The last step's norm (nan when it overflowed or nothing was measured)."""
        if self.reported_by_deepspeed:
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else math.nan
        return self._norm
