"""ZeRO-3 (and ZeRO-3 + CPU offload of params and optimizer) x TP=2 x DP=2 against a
single-device AdamW loop over 3 steps; zero.Init traps (``workers.zero3_tp``)."""
import pytest

from tests.distributed import workers
from tests.distributed.harness import run_workers

pytestmark = pytest.mark.slow


def test_zero3_tp2_dp2_matches_single_device():
    reports = run_workers(workers.zero3_tp, 4)
    print(f"\nzero3 x tp2 x dp2: {reports[0]}")
