"""Log lines name their node and rank; ranks other than 0 print only their own warnings."""
from __future__ import annotations

import logging

from ofa_ds.engine.logs import rank_handler, rank_tag


def test_rank_tag_names_node_and_rank():
    assert rank_tag({}) == "rank 0/1"
    assert rank_tag({"RANK": "3", "WORLD_SIZE": "8", "CROSS_RANK": "1"}) == "node 1 rank 3/8"
    assert rank_tag({"RANK": "5", "WORLD_SIZE": "8", "GROUP_RANK": "0"}) == "node 0 rank 5/8"  # torchrun


def test_only_rank_0_prints_shared_information():
    record = logging.LogRecord("ofa_ds.train", logging.INFO, __file__, 1, "global batch: %d", (16,), None)
    warning = logging.LogRecord("ofa_ds.data", logging.WARNING, __file__, 1, "skipping bad row", (), None)
    rank0 = rank_handler({"RANK": "0", "WORLD_SIZE": "2", "CROSS_RANK": "0"})
    rank1 = rank_handler({"RANK": "1", "WORLD_SIZE": "2", "CROSS_RANK": "0"})
    assert "[node 0 rank 0/2] ofa_ds.train INFO global batch: 16" in rank0.format(record)
    assert record.levelno >= rank0.level and record.levelno < rank1.level
    assert warning.levelno >= rank1.level and "[node 0 rank 1/2]" in rank1.format(warning)
