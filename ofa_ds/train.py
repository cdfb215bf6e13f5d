"""``ofa-ds pretrain`` and ``ofa-ds finetune``: config file + dotted overrides -> Trainer.

Examples::

    ofa-ds pretrain --config launch/configs/pretrain_demo_cpu.toml train.max_steps=20
    deepspeed --num_gpus 8 -m ofa_ds.train pretrain --config launch/configs/pretrain_base.toml
    ofa-ds finetune --config launch/configs/caption_demo_cpu.toml --init-from runs/demo/final
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ofa_ds.config.load import load_config


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config file (sections: model, data, optim, train, task, parallel)")
    p.add_argument("--init-from", help="fairseq .pt, OFA-HF or ofa-ds checkpoint: weights only, fresh optimizer")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest")
    p.add_argument("--deepspeed_config", "--deepspeed-config", metavar="FILE",
                   help="your own DeepSpeed JSON (same as train.deepspeed_template=FILE); ofa-ds fills in "
                        "batch, clipping, ZeRO stage, precision and optimizer from its config and refuses "
                        "a file that sets them differently")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # DeepSpeed's flag; always on
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.max_steps=10")
    return p


def run(argv, *, default_task: str, prog: str) -> int:
    args = _parser(prog).parse_args(argv)
    overrides = list(args.overrides)
    if not any(o.startswith("task.name=") for o in overrides) and args.config is None:
        overrides.insert(0, f"task.name={default_task}")
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    if args.resume:
        overrides.append("train.resume=true")
    if args.deepspeed_config:
        overrides.append(f"train.deepspeed_template={args.deepspeed_config}")
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, OSError) as err:  # a config mistake: say what and where, no traceback
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if default_task == "pretrain" and cfg.task.name != "pretrain":
        raise ValueError(f"ofa-ds pretrain runs task.name=pretrain, the config says {cfg.task.name!r}; "
                         "use ofa-ds finetune")
    from ofa_ds.engine.logs import setup_logging

    setup_logging()

    from ofa_ds.engine.ds_config import DeepSpeedConfigError
    from ofa_ds.engine.trainer import Trainer, dump_config

    try:
        trainer = Trainer(cfg)
    except DeepSpeedConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        dump_config(cfg, Path(cfg.train.out_dir))
    from ofa_ds.data.bad_rows import NoGoodRows
    from ofa_ds.engine.checkpoint import CheckpointSaveError

    try:
        trainer.run()
    except (CheckpointSaveError, NoGoodRows) as err:  # faults the run cannot go past: one line, exit 1
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if cfg.train.export_format:
        out = trainer.export(Path(cfg.train.out_dir) / "final", format=cfg.train.export_format)
        if out is not None:
            logging.getLogger("ofa_ds.train").info("exported the model to %s", out)
    return 0


def pretrain_main(argv=None) -> int:
    return run(argv, default_task="pretrain", prog="ofa-ds pretrain")


def finetune_main(argv=None) -> int:
    return run(argv, default_task="caption", prog="ofa-ds finetune")


if __name__ == "__main__":
    # `deepspeed [launcher args] --module ofa_ds.train pretrain|finetune ...`; the launcher puts
    # --local_rank=N first (the LOCAL_RANK variable carries the same).
    argv = [a for a in sys.argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    command, rest = argv[0], argv[1:]
    sys.exit({"pretrain": pretrain_main, "finetune": finetune_main}[command](rest))
