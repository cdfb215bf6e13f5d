"""Shared pytest fixtures.

The OFA vocabulary files and the golden parity fixture live in ``../shared`` beside the
checkout (never copied into the repo). ``OFA_DS_SHARED`` overrides that location.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("OFA_DS_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


# The reference data stays as laid down: no TSV row index is written into ../shared, and the
# fallback index cache is private to this test session (never ~/.cache, never a past run's).
# Set in the environment, so that the processes tests launch inherit it.
os.environ["OFA_DS_READONLY_DATA"] = str(shared_dir())
os.environ["OFA_DS_CACHE_DIR"] = tempfile.mkdtemp(prefix="ofa_ds_test_index_")
atexit.register(shutil.rmtree, os.environ["OFA_DS_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.fail(f"shared reference directory not found at {path} (set OFA_DS_SHARED)")
    return path


@pytest.fixture(scope="session")
def ofa_bpe_dir(shared: Path) -> Path:
    return shared / "ofa_bpe"


@pytest.fixture(scope="session")
def golden_dir(shared: Path) -> Path:
    return shared / "fixtures" / "ofa_golden"


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A small offline sample dataset (all streams, finetuning TSVs, a trained BPE)."""
    from preprocessing.make_sample_data import main as make_sample_data

    root = tmp_path_factory.mktemp("sample_data")
    args = [str(root), "--vl-rows", "48", "--text-rows", "16", "--image-rows", "8",
            "--detection-rows", "8", "--finetune-rows", "16", "--code-image-size", "32"]
    assert make_sample_data(args) == 0
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny-op tests (step-by-step decoding) are dominated by per-op overhead; extra intra-op
    threads only oversubscribe a shared CI machine (several times slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
