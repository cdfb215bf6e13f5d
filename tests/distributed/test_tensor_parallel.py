"""TP=2 against the single-device model on CPU/gloo (2 processes, ~30 s).

Asserted inside the worker (``workers.tp_parity``): logits, vocab-parallel loss and every
gradient within 1e-5 relative, replicated gradients bit-identical across TP ranks, the
dropout paths TP-invariant, vocab-parallel CE options, and a gathered TP=2 checkpoint.
"""
import pytest

from tests.distributed import workers
from tests.distributed.harness import run_workers

pytestmark = pytest.mark.slow


def test_tp2_matches_single_device():
    reports = run_workers(workers.tp_parity, 2)
    r0, r1 = reports
    assert r0["loss"] == r1["loss"]  # every TP rank computes the same loss
    assert r0["loss_rel"] < 1e-5 and r0["grad_rel"] < 1e-5
    print(f"\ntp_parity: {r0}")
