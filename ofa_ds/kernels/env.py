"""``ofa-ds env``: versions, devices and the kernel each op would use, with the reason."""
from __future__ import annotations

import argparse
import platform
import sys

import torch

from ofa_ds import kernels
from ofa_ds.kernels.optim import explain_optimizer_choice
from ofa_ds.kernels.backends import apex_unavailable, default_device_type, version_of


def _cuda_line() -> str:
    if not torch.cuda.is_available():
        return f"not available (torch built for CUDA {torch.version.cuda})" if torch.version.cuda \
            else "not available (CPU-only torch build)"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return f"{torch.version.cuda}, {torch.cuda.device_count()} device(s): {', '.join(sorted(names))}"


def _apex_line() -> str:
    why = apex_unavailable("cuda")
    return "NVIDIA apex importable" if why is None else why


def report(device_type: str, offload: bool) -> str:
    lines = [
        f"python     {platform.python_version()}",
        f"torch      {torch.__version__}",
        f"cuda       {_cuda_line()}",
        f"triton     {version_of('triton')}",
        f"deepspeed  {version_of('deepspeed')}",
        f"apex       {_apex_line()}",
        f"megablocks {version_of('megablocks')} (optional MoE backend; CUDA only)",
        "",
        f"kernels for device type {device_type!r}:",
    ]
    rows = kernels.describe(device_type)
    width = max(len(r["op"]) for r in rows)
    for row in rows:
        lines.append(f"  {row['op'].ljust(width)}  {row['active']:<10} {row['reason']}")
        for impl, status in row["candidates"].items():
            lines.append(f"  {'':{width}}    - {impl}: {status}")
    name, reason = explain_optimizer_choice(device_type, offload)
    lines.append(f"  {'optimizer'.ljust(width)}  {name:<10} {reason}"
                 f"{' (with --offload)' if offload else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-ds env", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device type to resolve kernels for (default: cuda if available)")
    parser.add_argument("--offload", action="store_true", help="show the optimizer for ZeRO-Offload")
    args = parser.parse_args(argv)
    print(report(args.device or default_device_type(), args.offload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
