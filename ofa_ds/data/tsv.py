"""Random-access TSV rows and base64 image decoding (spec §2.1).

Unlike OFA's ``FileDataset``, which reads sequentially and ignores the requested index, a
:class:`TSVFile` returns exactly row ``i``: sharding and shuffling happen on row indices
(``ofa_ds.data.sharding``), so any number of ranks and DataLoader workers can share one file.

The byte offset of every row is found by one scan and cached as ``<file>.index.npy`` beside the
file. The cache records the file's size and mtime, so a changed file is rescanned. When the
file's directory is read-only the cache goes to ``$OFA_DS_CACHE_DIR`` (default
``~/.cache/ofa_ds/tsv_index``), and when that fails too the index lives in memory only.
Files under a directory listed in ``$OFA_DS_READONLY_DATA`` (``os.pathsep``-separated) never
get an index beside them, even where the directory is writable (as it is for root): reference
data such as a shared fixture stays byte for byte as it was laid down.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ofa_ds.data.bad_rows import BadRow

__all__ = ["TSVFile", "BadRow", "decode_base64_image", "index_cache_dir"]

# As upstream, accept huge images (set once for the process: PIL reads the global at load time).
# Unlike upstream, ofa-ds does *not* set ``ImageFile.LOAD_TRUNCATED_IMAGES``: a truncated image
# (valid base64 of half a PNG/JPEG) then fails its full decode in ``decode_base64_image`` and is
# counted as an undecodable row, instead of training on PIL's grey fill.
Image.MAX_IMAGE_PIXELS = None

# Index file layout (int64): [magic, version, file size, file mtime_ns, n_rows, offsets[n_rows + 1]].
_MAGIC = 0x4F46415453560000  # "OFATSV\0\0"
_VERSION = 1
_HEADER = 5
_SCAN_CHUNK = 1 << 24
_URLSAFE = str.maketrans("-_", "+/")


def index_cache_dir() -> Path:
    """Fallback index directory for TSV files in read-only directories."""
    env = os.environ.get("OFA_DS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ofa_ds" / "tsv_index"


def _readonly_roots() -> list[Path]:
    env = os.environ.get("OFA_DS_READONLY_DATA", "")
    return [Path(p).resolve() for p in env.split(os.pathsep) if p]


def _scan_offsets(path: Path) -> np.ndarray:
    """Start offset of every row plus the end-of-file offset (n_rows + 1 entries)."""
    size = path.stat().st_size
    starts = [np.zeros(1, dtype=np.int64)]
    with open(path, "rb") as f:
        pos = 0
        while chunk := f.read(_SCAN_CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + pos + 1)
            pos += len(chunk)
    offsets = np.concatenate(starts)
    # A final newline ends the last row rather than starting an empty one.
    if offsets[-1] != size:
        offsets = np.append(offsets, size)
    return offsets


class TSVFile:
    """Rows of a separator-delimited text file by index.

    * ``selected_cols``: column indices (``"0,2,1"`` or a sequence of ints) that pick **and
      order** the returned fields, as OFA's ``selected_cols``; None returns all columns.
    * ``num_columns``: the exact column count every row must have. It comes from the file's
      format, never from its rows (a malformed first row must not make the good rows "bad").
      Without it, rows need at least the columns ``selected_cols`` reads, until a stream
      states its format (:meth:`expect_columns`).

    ``row(i)`` returns the fields as strings (trailing ``\\n``/``\\r\\n`` stripped) and raises
    :class:`BadRow` for a row with the wrong column count or invalid UTF-8. Reads use
    ``os.pread``, so forked DataLoader workers can share an instance; it also pickles.
    """

    def __init__(self, path, selected_cols: str | Sequence[int] | None = None,
                 separator: str = "\t", num_columns: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"TSV file {self.path} does not exist")
        if not separator:
            raise ValueError("separator must be a non-empty string")
        self.separator = separator
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._index_path: Path | None = None
        self._offsets = self._load_or_build_index()
        self.num_columns = num_columns
        self.selected_cols = self._parse_cols(selected_cols)
        self.min_columns = max(self.selected_cols) + 1 if self.selected_cols else 0

    # ------------------------------------------------------------------------------- index
    def _index_candidates(self) -> list[Path]:
        resolved = self.path.resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
        beside = resolved.with_name(resolved.name + ".index.npy")
        cached = index_cache_dir() / f"{resolved.name}.{digest}.index.npy"
        if any(resolved.is_relative_to(root) for root in _readonly_roots()):
            return [cached]
        return [beside, cached]

    def _load_or_build_index(self) -> np.ndarray:
        st = self.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        candidates = self._index_candidates()
        for cand in candidates:
            offsets = self._read_index(cand, stamp)
            if offsets is not None:
                self._index_path = cand
                return offsets
        offsets = _scan_offsets(self.path)
        header = np.array([_MAGIC, _VERSION, *stamp, len(offsets) - 1], dtype=np.int64)
        for cand in candidates:
            if self._write_index(cand, np.concatenate([header, offsets])):
                self._index_path = cand
                break
        return offsets

    @staticmethod
    def _read_index(cand: Path, stamp: tuple[int, int]) -> np.ndarray | None:
        try:
            data = np.load(cand, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if (data.ndim != 1 or data.dtype != np.int64 or len(data) < _HEADER + 1
                or data[0] != _MAGIC or data[1] != _VERSION or tuple(data[2:4]) != stamp
                or data[4] != len(data) - _HEADER - 1):
            return None  # stale (file changed) or not ours: rebuild
        return data[_HEADER:]

    @staticmethod
    def _write_index(cand: Path, data: np.ndarray) -> bool:
        # Write to a private temp name and rename, so ranks building at once never see half a file.
        tmp = cand.with_name(f".{cand.name}.{os.getpid()}.tmp")
        try:
            cand.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, data)
            os.replace(tmp, cand)
            return True
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False

    @property
    def index_path(self) -> Path | None:
        """Where the offset index is cached, or None when it is held in memory only."""
        return self._index_path

    # ------------------------------------------------------------------------------- rows
    def __len__(self) -> int:
        return len(self._offsets) - 1

    def expect_columns(self, count: int) -> None:
        """State the format's column count when the caller gave none (a stream knows its fields)."""
        if self.num_columns is None:
            self.num_columns = count

    def _parse_cols(self, cols) -> list[int] | None:
        if cols is None:
            return None
        if isinstance(cols, str):
            try:
                cols = [int(c) for c in cols.split(",") if c.strip()]
            except ValueError:
                raise ValueError(f"selected_cols must be comma-separated integers, got {cols!r}") from None
        cols = [int(c) for c in cols]
        bad = [c for c in cols if c < 0 or (self.num_columns is not None and c >= self.num_columns)]
        if bad:
            raise ValueError(f"selected_cols {bad} out of range for {self.path} "
                             f"with {self.num_columns} columns")
        return cols

    def _read_line(self, i: int) -> str:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        raw = os.pread(self._fd, end - start, start)
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRow(self.path, i, None, "invalid utf-8", str(e)) from None

    def row(self, i: int) -> list[str]:
        """Fields of row ``i`` (0-based), restricted to ``selected_cols`` when given."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {self.path} with {len(self)} rows")
        fields = self._read_line(i).split(self.separator)
        if self.num_columns is not None and len(fields) != self.num_columns:
            raise BadRow(self.path, i, None, "wrong column count",
                         f"expected {self.num_columns}, got {len(fields)}")
        if len(fields) < self.min_columns:
            raise BadRow(self.path, i, None, "wrong column count",
                         f"expected at least {self.min_columns}, got {len(fields)}")
        if self.selected_cols is None:
            return fields
        return [fields[c] for c in self.selected_cols]

    __getitem__ = row

    # ----------------------------------------------------------------------------- pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = state["_fd_pid"] = None
        if self._index_path is not None:
            state["_offsets"] = None  # reload the memory map instead of copying the array
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._offsets is None:
            self._offsets = self._load_or_build_index()

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)


def decode_base64_image(data: str, *, file=None, row: int | None = None, field="image") -> Image.Image:
    """Decode a base64 image field (standard or URL-safe alphabet) to an RGB PIL image.

    ``file``/``row``/``field`` only label the :class:`BadRow` raised on failure.
    """
    data = data.strip()
    if not data:
        raise BadRow(file, row, field, "empty image field")
    try:
        # URL-safe -> standard alphabet; "+" and "/" pass through, so both alphabets decode.
        raw = base64.b64decode(data.translate(_URLSAFE) + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as e:
        raise BadRow(file, row, field, "invalid base64", str(e)) from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # force decoding here so that failures are this row's, not a later step's
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise BadRow(file, row, field, "undecodable image", f"{type(e).__name__}: {e}") from None

