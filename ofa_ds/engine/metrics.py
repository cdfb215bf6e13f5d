"""What a run shows people: a progress bar, metrics.jsonl and TensorBoard (rank 0 only)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

logger = logging.getLogger("ofa_ds.train")

def json_line(record: dict) -> str:
    """One strict-JSON line: NaN and infinities (not JSON) are written as null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(clean(record), allow_nan=False) + "\n"


TB_SCALARS = ("loss", "lr", "grad_norm", "loss_scale", "samples_per_s", "tokens_per_s", "mfu", "step_time")


class MetricsLogger:
    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, progress: bool, total_steps: int,
                 initial_step: int = 0):
        self.enabled = enabled
        self.writer = self.bar = self.jsonl = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    def log_step(self, step: int, out: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json_line({"step": step, **out}))
        self.jsonl.flush()
        if self.writer is not None:
            for key in TB_SCALARS:
                self.writer.add_scalar(f"train/{key}", out[key], step)
            for key, value in out.items():
                if key.endswith("_loss"):
                    self.writer.add_scalar(f"train/{key}", value, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.2e}",
                                 samples_s=f"{out['samples_per_s']:.1f}")
        else:
            logger.info("step %d loss %.4f lr %.3e %.1f samples/s", step, out["loss"], out["lr"],
                        out["samples_per_s"])

    def log_example(self, step: int, image_3HW, text: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image("example/input", image_3HW, step)
            self.writer.add_text("example/target", text, step)

    def log_eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json_line({"step": step, "eval": metrics}))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"eval/{k}", v, step)
        logger.info("eval at step %d: %s", step, metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
