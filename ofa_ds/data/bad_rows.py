"""Bad input rows: the ``BadRow`` error and the policy that skips-and-counts or fails.

Readers and decoders raise :class:`BadRow` for a row they cannot use (wrong column count,
undecodable image, unparsable field). The dataset code catches it and hands it to a
:class:`BadRowPolicy`::

    try:
        sample = build_sample(tsv.row(i))
    except BadRow as err:
        policy.record(err)   # raises again when strict, else warns (rate-limited) and counts
        ...                  # skip the row

Counts are kept per epoch, per file and per reason, and survive resume through
``state_dict()``. A policy counts what happens in its own process: with DataLoader workers,
send each worker's ``summary()`` to the main process and ``merge()`` it there.
"""
from __future__ import annotations

import logging
from collections import defaultdict

logger = logging.getLogger("ofa_ds.data")


class BadRow(ValueError):
    """A row that cannot be used.

    ``file`` and ``row`` (0-based row index in the file) locate it, ``field`` names the column
    (a name or an index; None for the whole row), ``reason`` is a short stable category used for
    counting (e.g. ``"wrong column count"``), and ``detail`` is optional free text.
    """

    def __init__(self, file, row: int | None, field, reason: str, detail: str | None = None):
        self.file = str(file) if file is not None else "<unknown file>"
        self.row = row
        self.field = field
        self.reason = reason
        self.detail = detail
        where = f"{self.file}: row {row}" if row is not None else self.file
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # keep the attributes when it crosses a DataLoader worker boundary
        return (type(self), (self.file, self.row, self.field, self.reason, self.detail))


class BadRowPolicy:
    """Skip-and-count (default) or fail-fast (``strict=True``) handling of :class:`BadRow`.

    ``warn_limit`` warnings are logged per (file, reason) and epoch, then one note that further
    ones are suppressed; ``summary()`` still counts them all.
    """

    def __init__(self, strict: bool = False, warn_limit: int = 5):
        if warn_limit < 0:
            raise ValueError(f"warn_limit must be >= 0, got {warn_limit}")
        self.strict = strict
        self.warn_limit = warn_limit
        self.epoch = 0
        # epoch -> file -> reason -> count
        self._counts: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))

    def set_epoch(self, epoch: int) -> None:
        """Start counting under ``epoch`` (warnings are rate-limited per epoch)."""
        self.epoch = int(epoch)

    def record(self, err: BadRow) -> None:
        """Count ``err`` and warn; in strict mode re-raise it instead."""
        if self.strict:
            raise err
        per_reason = self._counts[self.epoch][err.file]
        n = per_reason.get(err.reason, 0) + 1
        per_reason[err.reason] = n
        if n <= self.warn_limit:
            logger.warning("skipping bad row: %s", err)
        if n == self.warn_limit + 1:
            logger.warning("more bad rows in %s (%s) this epoch; further warnings suppressed, "
                           "see the epoch summary", err.file, err.reason)

    def summary(self, epoch: int | None = None) -> dict[str, dict[str, int]]:
        """Counts for ``epoch`` (default: the current one) as ``{file: {reason: count}}``."""
        counts = self._counts.get(self.epoch if epoch is None else epoch, {})
        return {f: dict(r) for f, r in counts.items()}

    def total(self, epoch: int | None = None) -> int:
        """Number of bad rows in ``epoch``, or in all epochs when ``epoch`` is None."""
        epochs = self._counts.values() if epoch is None else [self._counts.get(epoch, {})]
        return sum(n for files in epochs for reasons in files.values() for n in reasons.values())

    def log_summary(self, epoch: int | None = None) -> None:
        """Log the epoch's counts once (call at the end of each epoch)."""
        epoch = self.epoch if epoch is None else epoch
        counts = self.summary(epoch)
        if not counts:
            return
        lines = [f"  {f}: {reason}: {n}" for f, r in sorted(counts.items()) for reason, n in sorted(r.items())]
        logger.warning("epoch %d: skipped %d bad rows\n%s", epoch, self.total(epoch), "\n".join(lines))

    def merge(self, counts: dict[str, dict[str, int]], epoch: int | None = None) -> None:
        """Add ``{file: {reason: count}}`` (e.g. a worker's ``summary()``) into ``epoch``."""
        target = self._counts[self.epoch if epoch is None else epoch]
        for f, reasons in counts.items():
            for reason, n in reasons.items():
                target[f][reason] = target[f].get(reason, 0) + n

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "counts": {e: self.summary(e) for e in self._counts},
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._counts.clear()
        for e, counts in state["counts"].items():
            self.merge(counts, epoch=int(e))
