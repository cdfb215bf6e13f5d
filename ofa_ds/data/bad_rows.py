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
``state_dict()``. A bad row is counted **once per epoch**, however often it is read (the extra
streams cycle, so one text row can be read several times in one VL epoch); ``reads()`` counts
the reads. The first message of each (file, reason) is always logged and kept (``first()``), so
a fatal error can name it even when later warnings were rate-limited. A policy counts what
happens in its own process: with DataLoader workers, send each worker's ``summary()`` to the
main process and ``merge()`` it there.
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


class NoGoodRows(RuntimeError):
    """A stream (or the whole vision-language input) has no usable row: fatal, because training on
    placeholders or on nothing would look like a normal run. The message names the file and the
    first bad row of each reason."""


def first_of_each_reason(errors) -> str:
    """'<first message of reason A>; <first of reason B>' over ``errors`` (BadRow or str)."""
    first: dict[str, str] = {}
    for err in errors:
        reason = err.reason if isinstance(err, BadRow) else str(err)
        first.setdefault(reason, str(err))
    return "; ".join(first.values())


class BadRowPolicy:
    """Skip-and-count (default) or fail-fast (``strict=True``) handling of :class:`BadRow`.

    ``warn_limit`` (>= 1) warnings are logged per (file, reason) and epoch, then one note that
    further ones are suppressed; ``summary()`` still counts them all. A row read again in the
    same epoch is neither counted nor warned about again.
    """

    def __init__(self, strict: bool = False, warn_limit: int = 5):
        if warn_limit < 1:
            raise ValueError(f"warn_limit must be >= 1 (the first bad row of each reason is always shown), "
                             f"got {warn_limit}")
        self.strict = strict
        self.warn_limit = warn_limit
        self.epoch = 0
        # epoch -> file -> reason -> distinct bad rows
        self._counts: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        self._reads: dict[int, dict[str, int]] = defaultdict(dict)  # epoch -> file -> bad reads
        self._first: dict[int, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        self._seen: set[tuple[str, int]] = set()  # (file, row) counted in the current epoch

    def set_epoch(self, epoch: int) -> None:
        """Start counting under ``epoch`` (warnings are rate-limited per epoch)."""
        if int(epoch) != self.epoch:
            self._seen = set()
        self.epoch = int(epoch)

    def record(self, err: BadRow) -> None:
        """Count ``err`` and warn; in strict mode re-raise it instead."""
        if self.strict:
            raise err
        reads = self._reads[self.epoch]
        reads[err.file] = reads.get(err.file, 0) + 1
        if err.row is not None:
            if (err.file, err.row) in self._seen:
                return  # the same row again (a cycling stream): counted and shown already
            self._seen.add((err.file, err.row))
        per_reason = self._counts[self.epoch][err.file]
        n = per_reason.get(err.reason, 0) + 1
        per_reason[err.reason] = n
        self._first[self.epoch][err.file].setdefault(err.reason, str(err))
        if n <= self.warn_limit:
            logger.warning("skipping bad row: %s", err)
        if n == self.warn_limit + 1:
            logger.warning("more bad rows in %s (%s) this epoch; further warnings suppressed, "
                           "see the epoch summary", err.file, err.reason)

    def summary(self, epoch: int | None = None) -> dict[str, dict[str, int]]:
        """Distinct bad rows in ``epoch`` (default: the current one) as ``{file: {reason: rows}}``."""
        counts = self._counts.get(self.epoch if epoch is None else epoch, {})
        return {f: dict(r) for f, r in counts.items()}

    def reads(self, epoch: int | None = None) -> dict[str, int]:
        """Reads of bad rows in ``epoch`` per file (>= the row count when a stream cycles)."""
        return dict(self._reads.get(self.epoch if epoch is None else epoch, {}))

    def first(self, file, epoch: int | None = None) -> str:
        """The first message of each reason for ``file`` in ``epoch``, joined by '; '."""
        return "; ".join(self._first.get(self.epoch if epoch is None else epoch, {}).get(str(file), {}).values())

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
        rows, reads = self.total(epoch), sum(self.reads(epoch).values())
        also = f" ({reads} reads: the extra streams cycle)" if reads > rows else ""
        logger.warning("epoch %d: skipped %d bad rows%s\n%s", epoch, rows, also, "\n".join(lines))

    def merge(self, counts: dict[str, dict[str, int]], epoch: int | None = None) -> None:
        """Add ``{file: {reason: count}}`` (e.g. a worker's ``summary()``) into ``epoch``."""
        target = self._counts[self.epoch if epoch is None else epoch]
        for f, reasons in counts.items():
            for reason, n in reasons.items():
                target[f][reason] = target[f].get(reason, 0) + n

    def state_dict(self) -> dict:
        # Plain dicts, lists, ints and strings: the checkpoint loads with weights_only=True.
        return {
            "epoch": self.epoch,
            "counts": {e: self.summary(e) for e in self._counts},
            "reads": {e: self.reads(e) for e in self._reads},
            "first": {e: {f: dict(r) for f, r in files.items()} for e, files in self._first.items()},
            "seen": [[f, row] for f, row in sorted(self._seen)],
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._counts.clear()
        self._reads.clear()
        self._first.clear()
        for e, counts in state["counts"].items():
            self.merge(counts, epoch=int(e))
        for e, reads in state.get("reads", {}).items():
            self._reads[int(e)].update(reads)
        for e, files in state.get("first", {}).items():
            for f, reasons in files.items():
                self._first[int(e)][f].update(reasons)
        self._seen = {(f, int(row)) for f, row in state.get("seen", [])}
