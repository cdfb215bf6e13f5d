"""Images for the TSV rows: read, check by a full decode, optionally re-encode, base64.

By default the file's bytes go into the row unchanged (base64, URL-safe alphabet as in OFA's
released TSVs); the image is still fully decoded once so that a corrupt or truncated file is
caught here, not in the middle of training. ``ImageOptions(max_side=..., jpeg_quality=...)``
re-encodes: shrink so the longer side is at most ``max_side`` (aspect kept, boxes must be scaled
by the returned factors) and/or write JPEG at ``jpeg_quality``.
"""
from __future__ import annotations

import base64
import io
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageFile

from ofa_ds.data.bad_rows import BadRow


_ADDRESS = re.compile(r" <[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class ImageOptions:
    max_side: int | None = None
    jpeg_quality: int | None = None

    def validate(self) -> None:
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"--max-side must be >= 8, got {self.max_side}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must lie in [1, 100], got {self.jpeg_quality}")

    @property
    def reencodes(self) -> bool:
        return self.max_side is not None or self.jpeg_quality is not None


@dataclass
class EncodedImage:
    b64: str
    width: int           # of the stored image
    height: int
    scale_x: float       # stored / original, for boxes
    scale_y: float
    source_width: int
    source_height: int


@contextmanager
def strict_decoding():
    """Make truncated files fail to decode, whatever another library set the global to (upstream
    accepts them at training time; ofa_ds.data.tsv and the converters report them instead)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def read_file(path, *, where=None, row=None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadRow(where or path, row, "image", "missing file", str(path)) from None
    except OSError as e:
        raise BadRow(where or path, row, "image", "unreadable file", f"{path}: {e}") from None


def read_range(path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (an image member inside a tar)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def decode(data: bytes, *, where, row=None) -> Image.Image:
    """Fully decoded PIL image; :class:`BadRow` ("corrupt image") when it does not decode."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        # No object addresses in the message: reruns must write identical summaries.
        detail = _ADDRESS.sub("", f"{type(e).__name__}: {e}")
        raise BadRow(where, row, "image", "corrupt image", detail) from None


def to_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def save(img: Image.Image, fmt: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def encode_image(data: bytes, opts: ImageOptions, *, where, row=None) -> EncodedImage:
    img = decode(data, where=where, row=row)
    w0, h0 = img.size
    if not opts.reencodes:
        return EncodedImage(to_b64(data), w0, h0, 1.0, 1.0, w0, h0)
    fmt = "JPEG" if opts.jpeg_quality is not None or img.format not in ("PNG", "WEBP") else img.format
    if img.mode not in ("RGB", "L") and fmt == "JPEG":
        img = img.convert("RGB")
    if opts.max_side is not None and max(w0, h0) > opts.max_side:
        s = opts.max_side / max(w0, h0)
        img = img.resize((max(1, round(w0 * s)), max(1, round(h0 * s))), Image.BICUBIC)
    w, h = img.size
    return EncodedImage(to_b64(save(img, fmt, opts.jpeg_quality or 95)), w, h, w / w0, h / h0, w0, h0)

