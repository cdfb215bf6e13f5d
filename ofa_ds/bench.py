"""``ofa-ds bench data|train``: dispatch to the benchmark that owns the measured code.

The benchmark modules are imported only when chosen, so ``bench data`` does not import the
engine (or DeepSpeed).
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "data": ("ofa_ds.data.bench", "pretraining loader throughput (samples/s per worker)"),
    "train": ("ofa_ds.engine.bench", "training step throughput"),
}


def _usage() -> str:
    lines = ["usage: ofa-ds bench {data,train} [ARGS...]", ""]
    lines += [f"  {name:6s} {help_}" for name, (_, help_) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"ofa-ds bench: unknown benchmark {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
