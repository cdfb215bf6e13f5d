"""OFA's learning-rate schedule: linear warm-up, then linear ("polynomial", power 1) decay."""
from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


def polynomial_decay_factor(step: int, total: int, warmup: int, peak: float, end: float) -> float:
    """Multiplier of the peak lr after ``step`` optimizer updates."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup  # fairseq starts warm-up at lr * 1/warmup, not 0
    if step >= total:
        return end / peak
    progress = (step - warmup) / max(1, total - warmup)
    return (end + (peak - end) * (1 - progress)) / peak


def build_scheduler(optimizer, *, total_steps: int, warmup_ratio: float, peak_lr: float, end_lr: float):
    warmup = int(total_steps * warmup_ratio)
    return LambdaLR(optimizer, lambda step: polynomial_decay_factor(step, total_steps, warmup, peak_lr, end_lr))
