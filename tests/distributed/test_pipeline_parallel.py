"""DeepSpeed pipeline (PP=2, and PP=2 x TP=2) against a single-device AdamW loop.

Asserted in ``workers.pp_parity``: the loss of 3 optimizer steps (2 micro-batches each,
shapes changing every step, ZeRO-1, clipping) within 1e-5 relative; the tied embedding
restored from a checkpoint on both stages; the sequential twin equal to ``OFAModel``.
"""
import pytest

from tests.distributed import workers
from tests.distributed.harness import run_workers

pytestmark = pytest.mark.slow


def test_pp2_matches_single_device(tmp_path):
    reports = run_workers(workers.pp_parity, 2, str(tmp_path), 1)
    assert reports[0]["losses"] == reports[1]["losses"]  # broadcast over the pipe group
    print(f"\npp2: {reports[0]}")


def test_pp2_tp2_matches_single_device(tmp_path):
    reports = run_workers(workers.pp_parity, 4, str(tmp_path), 2)
    assert len({tuple(r["losses"]) for r in reports}) == 1
    print(f"\npp2xtp2: {reports[0]}")
