"""What a run shows people: a progress bar, metrics.jsonl, TensorBoard and, when
``train.wandb_project`` is set, Weights & Biases (rank 0 only; wandb is imported only then).

On resume (``initial_step`` > 0) the records of steps after the checkpoint's step are dropped
from metrics.jsonl, and TensorBoard purges its events from that step on: the steps replayed
after a kill are logged once, by the resumed run.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

logger = logging.getLogger("ofa_ds.train")


def json_line(record: dict) -> str:
    """One strict-JSON line: NaN and infinities (not JSON) are written as null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(clean(record), allow_nan=False) + "\n"


def truncate_after(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (atomically); a torn last line from a kill goes too."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            record_step = None
        if isinstance(record_step, int) and record_step <= step and line.endswith("\n"):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
        logger.info("resuming at step %d: dropped %d later records from %s", step, dropped, path)


TB_SCALARS = ("loss", "lr", "grad_norm", "loss_scale", "samples_per_s", "tokens_per_s", "mfu", "step_time")


def train_scalars(out: dict) -> dict[str, float]:
    """The per-step scalars under their dashboard names (the same in TensorBoard and W&B)."""
    keys = [*TB_SCALARS, *sorted(k for k in out if k.endswith("_loss"))]
    return {f"train/{k}": out[k] for k in keys if k in out}


def start_wandb(project: str, out_dir: Path, run_config: dict | None):
    try:
        import wandb
    except ImportError as err:
        raise ValueError(f"train.wandb_project={project!r} needs the wandb package: pip install wandb "
                         "(or leave train.wandb_project unset)") from err
    return wandb.init(project=project, dir=str(out_dir), config=run_config, name=out_dir.name)


class MetricsLogger:
    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, progress: bool, total_steps: int,
                 initial_step: int = 0, wandb_project: str | None = None, run_config: dict | None = None):
        self.enabled = enabled
        self.writer = self.bar = self.jsonl = self.wandb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if initial_step > 0:
            truncate_after(out_dir / "metrics.jsonl", initial_step)
        if wandb_project:
            self.wandb = start_wandb(wandb_project, out_dir, run_config)
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = {"purge_step": initial_step + 1} if initial_step > 0 else {}
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), **purge)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    def log_step(self, step: int, out: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json_line({"step": step, **out}))
        self.jsonl.flush()
        scalars = train_scalars(out)
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
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
        if self.wandb is not None:
            self.wandb.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        logger.info("eval at step %d: %s", step, metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
