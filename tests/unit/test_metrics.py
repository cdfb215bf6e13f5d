from __future__ import annotations

import pytest

from ofa_ds.tasks.metrics import cider_d

REFS = [["a red circle on the left"], ["two blue squares at the top"], ["a green triangle in the middle"]]


def test_perfect_captions_score_ten():
    assert cider_d([r[0] for r in REFS], REFS) == pytest.approx(10.0)


def test_wrong_and_partial_captions_score_lower():
    perfect = cider_d([r[0] for r in REFS], REFS)
    partial = cider_d(["a red circle", "two blue squares", "a green triangle"], REFS)
    wrong = cider_d(["two blue squares at the top", "a red circle on the left", "nothing"], REFS)
    assert perfect > partial > wrong >= 0.0


def test_length_penalty_and_clipping():
    # Repeating a right word does not pay (clipped by the reference count), and a much longer
    # caption is damped by the length Gaussian.
    base = cider_d(["a red circle on the left", "x", "y"], REFS)
    repeated = cider_d(["a red red red circle on the left", "x", "y"], REFS)
    assert repeated < base


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        cider_d(["a"], REFS)
