"""The conversion engine behind ``ofa-ds prepare``: streaming, sharded, parallel, resumable.

A :class:`Converter` names the records of its source in a fixed order (``records()``: small,
picklable descriptors such as a file path plus annotations) and turns one record into TSV rows
(``rows()``), raising :class:`~ofa_ds.data.bad_rows.BadRow` for an unusable record. The engine:

* cuts the record stream into chunks of ``shard_records``; chunk k becomes shard
  ``NAME-0000k.tsv`` (so a shard holds at most that many records' rows), with its row index
  ``NAME-0000k.tsv.index.npy`` (``ofa_ds.data.tsv`` format) and a ``NAME-0000k.done.json``
  summary, written last: a shard with its ``.done.json`` is complete;
* runs chunks on ``workers`` processes (0: in this process) with at most two chunks per worker
  in flight, so memory stays flat in the number of records;
* resumes: a rerun with the same settings skips complete shards and redoes the rest, and since
  chunking and conversion are deterministic the result equals an uninterrupted run;
* counts every skipped record per reason with the first examples named (``--strict``: the first
  bad record stops the run), and writes ``NAME.summary.json``.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from ofa_ds.data.bad_rows import BadRow
from preprocessing.formats import Format, get_format
from preprocessing.images import ImageOptions, strict_decoding

logger = logging.getLogger("ofa_ds.prepare")

_EXAMPLES = 5
# Test hook: SIGKILL this process after writing this many rows (simulates a crash mid-shard).
_KILL_AFTER_ENV = "OFA_DS_PREPARE_KILL_AFTER_ROWS"
_FIELD_JUNK = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


class Converter:
    """One source layout → one output format. Subclasses set ``kind`` and ``format``."""

    kind: str = ""
    format: str = ""
    writer: str = "tsv"   # or "webdataset": rows() yields (key, {ext: bytes}) samples
    in_process: bool = False  # True: never fork workers (one model on one device)
    image_options: ImageOptions = ImageOptions()

    def records(self) -> Iterator[Any]:
        raise NotImplementedError

    def total(self) -> int | None:
        """Number of records when known cheaply (for the progress bar)."""
        return None

    def rows(self, record) -> Iterable[list | BadRow]:
        """The rows of one record. Raise :class:`BadRow` to skip the whole record, or yield a
        ``BadRow`` among the rows to count a dropped part of it (one empty caption of five)."""
        raise NotImplementedError

    def convert_chunk(self, records: list, emit, bad) -> None:
        """Rows of a whole chunk; override to batch (image codes). ``emit(rows)`` once per
        record converted, ``bad(err)`` per :class:`BadRow`."""
        for rec in records:
            try:
                out = list(self.rows(rec))
            except BadRow as err:
                bad(err)
                continue
            for item in out:
                if isinstance(item, BadRow):
                    bad(item)
            emit([r for r in out if not isinstance(r, BadRow)])

    def settings(self) -> dict:
        """What the output depends on (recorded; a resume with other settings is refused)."""
        return {}

    def finish(self, out_dir: Path, name: str) -> list[str]:
        """Write side files after all shards (answer lists, class maps); returns their names."""
        return []


@dataclass
class ChunkResult:
    shard: int
    records: int = 0
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Summary:
    kind: str
    format: str
    out_dir: str
    name: str
    records: int = 0
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    resumed_shards: int = 0
    side_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    def add(self, res: ChunkResult) -> None:
        self.records += res.records
        self.rows += res.rows
        for reason, n in res.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            ex = self.examples.setdefault(reason, [])
            ex.extend(res.examples.get(reason, [])[: _EXAMPLES - len(ex)])

    def report(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        lines = [f"{self.kind} -> {self.format}: {self.rows} rows from {self.records} records in "
                 f"{len(self.shards)} shard(s) under {self.out_dir} ({self.resumed_shards} resumed), "
                 f"{self.seconds:.1f}s, {rate:.1f} records/s with {max(self.workers, 1)} process(es)"]
        total_bad = sum(self.skipped.values())
        # Counts are per item: a whole record, or a part of one (one empty caption of five).
        lines.append(f"skipped or left out: {total_bad}" + (":" if total_bad else ""))
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  {reason}: {n}")
            lines += [f"    e.g. {e}" for e in self.examples.get(reason, [])[:2]]
        if self.side_files:
            lines.append("side files: " + ", ".join(self.side_files))
        return "\n".join(lines)


def clean_field(value) -> str:
    """A TSV field: tabs and line breaks inside text become spaces (they would split the row)."""
    return str(value).translate(_FIELD_JUNK)


def _shard_paths(out_dir: Path, name: str, k: int, ext: str = "tsv") -> tuple[Path, Path]:
    stem = f"{name}-{k:05d}"
    return out_dir / f"{stem}.{ext}", out_dir / f"{stem}.done.json"


class _TSVSink:
    def __init__(self, tmp: Path, num_columns: int, kind: str, fmt: str):
        self.f = open(tmp, "w", encoding="utf-8", newline="\n")
        self.num_columns, self.kind, self.fmt = num_columns, kind, fmt

    def write(self, row) -> None:
        if len(row) != self.num_columns:  # a converter bug, not bad input
            raise AssertionError(f"{self.kind} made {len(row)} fields for {self.fmt}")
        self.f.write("\t".join(clean_field(v) for v in row) + "\n")

    def close(self) -> None:
        self.f.close()


class _TarSink:
    """webdataset shard: each sample's members ``KEY.<ext>`` written next to each other."""

    def __init__(self, tmp: Path, *_):
        import tarfile
        self.tar = tarfile.open(tmp, "w")

    def write(self, sample) -> None:
        import io
        import tarfile
        key, members = sample
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: reruns give equal bytes
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class _ShardJob:
    """Converts one chunk into one finished shard (runs in a worker or in-process)."""

    def __init__(self, converter: Converter, fmt: Format, out_dir: Path, name: str, strict: bool):
        self.converter, self.fmt, self.out_dir, self.name, self.strict = converter, fmt, out_dir, name, strict
        self.kill_after = int(os.environ.get(_KILL_AFTER_ENV, "0") or 0)
        self.written = 0

    def __call__(self, shard: int, records: list) -> ChunkResult:
        tar = self.converter.writer == "webdataset"
        path, done = _shard_paths(self.out_dir, self.name, shard, "tar" if tar else "tsv")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        res = ChunkResult(shard, records=len(records))
        sink = (_TarSink if tar else _TSVSink)(tmp, self.fmt.num_columns, self.converter.kind, self.fmt.name)

        def emit(rows):
            for row in rows:
                sink.write(row)
                res.rows += 1
                self.written += 1
                if self.kill_after and self.written >= self.kill_after:
                    sink.close()
                    os.kill(os.getpid(), 9)

        def bad(err: BadRow):
            if self.strict:
                raise err
            res.skipped[err.reason] = res.skipped.get(err.reason, 0) + 1
            ex = res.examples.setdefault(err.reason, [])
            if len(ex) < _EXAMPLES:
                ex.append(str(err))

        try:
            with strict_decoding():
                self.converter.convert_chunk(records, emit, bad)
        except BaseException:
            sink.close()
            tmp.unlink(missing_ok=True)
            raise
        sink.close()
        os.replace(tmp, path)
        if not tar:
            from ofa_ds.data.tsv import TSVFile  # writes NAME-k.tsv.index.npy beside the shard
            TSVFile(path, num_columns=self.fmt.num_columns)
        _write_json(done, asdict(res))
        return res


_JOB: _ShardJob | None = None


def _init_worker(job: _ShardJob) -> None:
    global _JOB
    _JOB = job


def _run_in_worker(shard: int, records: list) -> ChunkResult:
    assert _JOB is not None
    return _JOB(shard, records)


def _chunks(records: Iterable, size: int) -> Iterator[tuple[int, list]]:
    it = iter(records)
    k = 0
    while chunk := list(islice(it, size)):
        yield k, chunk
        k += 1


def _check_resume(out_dir: Path, name: str, fingerprint: dict, overwrite: bool) -> None:
    marker = out_dir / f"{name}.prepare.json"
    if overwrite:
        stem = glob.escape(name)
        for p in glob.glob(str(out_dir / f"{stem}-[0-9]*")) + glob.glob(str(out_dir / f".{stem}-[0-9]*")):
            os.unlink(p)
        marker.unlink(missing_ok=True)
        (out_dir / f"{name}.summary.json").unlink(missing_ok=True)
    if marker.exists():
        before = json.loads(marker.read_text(encoding="utf-8"))
        if before != fingerprint:
            changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            raise ValueError(f"{out_dir} already holds a '{name}' conversion with other settings "
                             f"({', '.join(changed)}); pass --overwrite or choose another --name")
    else:
        _write_json(marker, fingerprint)
    for p in glob.glob(str(out_dir / f".{glob.escape(name)}-[0-9]*.tmp")):  # partial shards of a killed run
        os.unlink(p)


def run(converter: Converter, out_dir, *, name: str, shard_records: int = 10000, workers: int = 0,
        strict: bool = False, overwrite: bool = False, limit: int | None = None,
        progress: bool | None = None) -> Summary:
    """Convert every record of ``converter`` into shards under ``out_dir``; see module doc."""
    if shard_records < 1:
        raise ValueError(f"--shard-records must be >= 1, got {shard_records}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    fmt = get_format(converter.format)
    converter.image_options.validate()
    if converter.in_process:
        workers = 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = {"kind": converter.kind, "format": fmt.name, "shard_records": shard_records,
                   "limit": limit, "images": asdict(converter.image_options), **converter.settings()}
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    _check_resume(out_dir, name, fingerprint, overwrite)

    summary = Summary(converter.kind, fmt.name, str(out_dir), name, workers=workers)
    start = time.perf_counter()
    records = converter.records()
    if limit is not None:
        records = islice(records, limit)
    total = converter.total()
    if total is not None and limit is not None:
        total = min(total, limit)

    from tqdm import tqdm
    bar = tqdm(total=total, unit="rec", desc=f"prepare {converter.kind}", disable=not progress if progress is not None
               else None, file=sys.stderr)
    job = _ShardJob(converter, fmt, out_dir, name, strict)
    ext = "tar" if converter.writer == "webdataset" else "tsv"

    results: list[ChunkResult] = []

    def finished(res: ChunkResult, resumed=False):
        results.append(res)
        summary.resumed_shards += resumed
        bar.update(res.records)

    def pending():
        for k, chunk in _chunks(records, shard_records):
            shard, done = _shard_paths(out_dir, name, k, ext)
            if done.exists() and shard.exists():
                finished(ChunkResult(**json.loads(done.read_text(encoding="utf-8"))), resumed=True)
            else:
                yield k, chunk

    try:
        if workers == 0:
            for k, chunk in pending():
                finished(job(k, chunk))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job,)) as pool:
                in_flight = set()
                for k, chunk in pending():
                    in_flight.add(pool.submit(_run_in_worker, k, chunk))
                    if len(in_flight) >= 2 * workers:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for f in done:
                            finished(f.result())
                for f in in_flight:
                    finished(f.result())
    finally:
        bar.close()
    for res in sorted(results, key=lambda r: r.shard):  # shard order: the same summary for any worker count
        summary.add(res)
        summary.shards.append(_shard_paths(out_dir, name, res.shard, ext)[0].name)
    summary.side_files = converter.finish(out_dir, name)
    summary.seconds = time.perf_counter() - start
    _write_json(out_dir / f"{name}.summary.json", asdict(summary))
    return summary


def shard_files(out_dir, name: str) -> list[Path]:
    """The finished shards of a conversion, in order."""
    return sorted(p for p in Path(out_dir).glob(f"{glob.escape(name)}-[0-9]*.tsv")
                  if _shard_paths(Path(out_dir), name, int(p.stem.rsplit("-", 1)[1]))[1].exists())


def merge_shards(out_dir, name: str) -> Path:
    """Concatenate the shards into ``NAME.tsv`` (+ index), for readers that take one file."""
    out = Path(out_dir) / f"{name}.tsv"
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as dst:
        for shard in shard_files(out_dir, name):
            with open(shard, "rb") as src:
                while block := src.read(1 << 24):
                    dst.write(block)
    os.replace(tmp, out)
    from ofa_ds.data.tsv import TSVFile
    TSVFile(out)
    return out
