"""Prefix tree over token-id sequences, for constrained decoding (spec §7.4).

Each candidate answer is stored as ``[bos, t1, ..., tk, eos]``. ``next(prefix)`` walks the
tree from the root along ``prefix`` and returns the ids that may follow; a prefix that falls
off the tree may only be followed by ``eos``.
"""
from __future__ import annotations

from typing import Iterable, Sequence


class Trie:
    def __init__(self, sequences: Iterable[Sequence[int]] = (), *, eos: int = 2):
        self.eos = eos
        self.root: dict[int, dict] = {}
        for seq in sequences:
            self.insert(seq)

    def insert(self, sequence: Sequence[int]) -> None:
        node = self.root
        for token in sequence:
            node = node.setdefault(int(token), {})

    def next(self, prefix: Sequence[int]) -> list[int]:
        """Ids allowed after ``prefix`` (which starts with bos); ``[eos]`` off the tree."""
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return [self.eos]
        return list(node)
