"""Small helpers shared by tests."""
from __future__ import annotations

import os

# What a one-process start (ofa_ds.engine.distributed.init_distributed) writes into os.environ.
# A process a test launches must not inherit them from the test session: it would join the
# session's own group, or bind its MASTER_PORT a second time (EADDRINUSE).
_GROUP_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    """The test session's environment for a launched process, without process-group variables."""
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_VARIABLES}
    env.update(extra)
    return env
