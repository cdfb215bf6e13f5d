"""Log lines that say who wrote them.

Every line carries ``[node N rank R/W]`` (the node only under a multi-node launcher). Rank 0
prints the information every rank has alike (setup, kernel choices, the data plan, steps);
the other ranks print only warnings and errors, which are theirs (a bad row in their shard,
a resume mismatch), so nothing appears once per process untagged.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

# The node index as the launchers name it: DeepSpeed's launcher, torchrun, SLURM-style scripts.
_NODE_VARS = ("CROSS_RANK", "GROUP_RANK", "NODE_RANK")


def rank_tag(env: Mapping[str, str] = os.environ) -> str:
    tag = f"rank {env.get('RANK', '0')}/{env.get('WORLD_SIZE', '1')}"
    node = next((env[v] for v in _NODE_VARS if env.get(v) not in (None, "")), None)
    return f"node {node} {tag}" if node is not None else tag


def rank_handler(env: Mapping[str, str] = os.environ) -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{rank_tag(env)}] %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO if int(env.get("RANK", "0")) == 0 else logging.WARNING)
    return handler


def setup_logging(env: Mapping[str, str] = os.environ) -> None:
    """For the command-line entry points (the launcher has set RANK/WORLD_SIZE by then)."""
    logging.basicConfig(level=logging.INFO, handlers=[rank_handler(env)])
