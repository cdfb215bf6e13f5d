"""The ``ofa-ds`` command.

Each subcommand lives in the module that owns its logic and exposes ``main(argv)``;
this file only maps names to those functions, imported lazily so that ``ofa-ds convert``
does not pay for importing DeepSpeed.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("ofa_ds.train", "pretrain_main", "pretrain (from scratch or --init-from a checkpoint)"),
    "finetune": ("ofa_ds.train", "finetune_main", "finetune a task head on the same engine"),
    "evaluate": ("ofa_ds.tasks.evaluation", "main", "score a task's valid/test split with a checkpoint"),
    "convert": ("ofa_ds.model.convert", "main", "convert checkpoints between fairseq, HF and ofa-ds"),
    "generate": ("ofa_ds.generate", "main", "run OFA generation on an image and a prompt"),
    "build-vocab": ("ofa_ds.data.build_vocab", "main", "train a byte-level BPE in OFA's file layout"),
    "make-sample-data": ("preprocessing.make_sample_data", "main", "write the offline sample dataset"),
    "prepare": ("preprocessing.prepare", "main", "convert COCO / VQA / RefCOCO / ... / webdataset to TSV shards"),
    "inspect": ("preprocessing.inspect_tsv", "main", "row count, column check, decoded rows, contact sheet"),
    "bench data": ("ofa_ds.data.bench", "main", "pretraining loader throughput (samples/s per worker)"),
    "bench train": ("ofa_ds.engine.bench", "main", "training step throughput, FLOPs and MFU per option"),
    "bench generate": ("ofa_ds.generation.bench", "main", "beam-search captioning tokens/s"),
    "plan": ("ofa_ds.parallel.planner", "main", "per-GPU memory plan for each parallel layout"),
    "env": ("ofa_ds.kernels.env", "main", "print the active kernels and why"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ofa-ds COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    # Two-word commands ("bench data") first, then one-word ones.
    name, rest = (" ".join(argv[:2]), argv[2:]) if " ".join(argv[:2]) in COMMANDS else (argv[0], argv[1:])
    if name not in COMMANDS:
        print(f"ofa-ds: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
