"""``ofa-ds bench data --vl-stages``: vision-language rows per second per core, by stage.

One process, torch on one thread (= one loader worker), the VL stream alone at 384 px: every
row is read, decoded and turned into its two samples, and every 8 rows are collated. Two
measurements:

* rows/s per core (rows per CPU-second of this thread), before (``transforms.use_fast_paths(False)``: the straightforward code the
  fast paths replace, bitwise the same images) and after, interleaved A B A B, medians;
* where a row's time goes: each stage's functions are wrapped with a clock (read row,
  base64, image decode, resize+crop, augment, to tensor, tokenise, collate; "other" is the
  rest: text normalisation, negatives, sample records, RNG).
"""
from __future__ import annotations

import base64
import contextlib
import io
import statistics
import time
from collections import defaultdict
from pathlib import Path

# CPU time of this thread, not wall time: "per core" is rows per CPU-second, and a shared host's
# other processes then cost (almost) nothing but cache and memory bandwidth.
_clock = time.thread_time

STAGES = ("read row", "base64", "image decode", "resize+crop", "augment", "to tensor", "tokenise", "collate",
          "other")


class StageClock:
    """Wraps the stage functions in place (``patched``) and sums their time per stage."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def _timed(self, fn, stage):
        def run(*args, **kwargs):
            t = _clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += _clock() - t
        return run

    def _decode(self, fn):
        def run(data, *args, **kwargs):
            # base64 alone, timed on a second decode that is not part of the row's total.
            t = _clock()
            base64.b64decode(data)
            b64 = _clock() - t
            t = _clock()
            try:
                return fn(data, *args, **kwargs)
            finally:
                self.seconds["base64"] += b64
                self.seconds["image decode"] += _clock() - t - b64
                self.extra += b64
        return run

    @contextlib.contextmanager
    def patched(self):
        from ofa_ds.data import transforms as T
        from ofa_ds.data.streams import vision_language as vl
        from ofa_ds.data.tsv import TSVFile
        from ofa_ds.data.vocab import Vocabulary

        self.extra = 0.0
        targets = [(TSVFile, "row", "read row"), (T, "random_resize_center_crop", "resize+crop"),
                   (T, "random_resize_object_crop", "resize+crop"), (T.RandomAugment, "__call__", "augment"),
                   (T, "to_tensor", "to tensor"), (Vocabulary, "encode", "tokenise")]
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
        saved.append((vl, "decode_base64_image", vl.decode_base64_image))
        try:
            for obj, name, stage in targets:
                setattr(obj, name, self._timed(getattr(obj, name), stage))
            vl.decode_base64_image = self._decode(vl.decode_base64_image)
            yield self
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)


def _vl_stream(root: Path, vocab, size: int):
    from ofa_ds.data.streams import NegativeSamples, VisionLanguageStream
    from ofa_ds.data.tsv import TSVFile

    tsv = TSVFile(root / "pretrain" / "vision_language_examples.tsv", "0,1,2,3,4,5,6,7")
    negatives = NegativeSamples.from_dir(str(root / "pretrain" / "negative_sample"))
    return VisionLanguageStream(tsv, vocab, negatives, patch_image_size=size)


def _pass(stream, rows: int, start: int, clock: StageClock | None = None) -> float:
    """Seconds for ``rows`` rows (two samples each) and their collation by 8."""
    from ofa_ds.data.collate import collate
    from ofa_ds.data.streams.common import sample_rng

    collate_fn = clock._timed(collate, "collate") if clock else collate
    n = len(stream)
    t = _clock()
    samples = []
    for i in range(start, start + rows):
        samples += stream.samples(i % n, sample_rng(7, "vision_language", 1, i))
        if len(samples) == 16:
            collate_fn(samples, 1)
            samples = []
    return _clock() - t - (clock.extra if clock else 0.0)


def write_jpeg_copy(root: Path, out: Path, scale: float, quality: int = 90) -> Path:
    """The VL file with every image re-encoded as JPEG (OFA's data is JPEG), sides x ``scale``;
    grounding boxes scaled alike. Other files are linked."""
    from PIL import Image

    from ofa_ds.data.tsv import TSVFile, decode_base64_image

    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    src = root / "pretrain"
    for item in src.iterdir():
        if item.name.startswith("vision_language_examples.tsv"):
            continue
        dest = out / "pretrain" / item.name
        if not dest.exists():
            dest.symlink_to(item.resolve())
    tsv = TSVFile(src / "vision_language_examples.tsv")
    with open(out / "pretrain" / "vision_language_examples.tsv", "w", encoding="utf-8") as f:
        for i in range(len(tsv)):
            fields = tsv.row(i)
            img = decode_base64_image(fields[1])
            if scale != 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
                if fields[7] == "visual_grounding":
                    fields[4] = ",".join(f"{float(v) * scale:g}" for v in fields[4].split(","))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            fields[1] = base64.b64encode(buf.getvalue()).decode("ascii")
            f.write("\t".join(fields) + "\n")
    return out


def run(root: Path, vocab, *, size: int = 384, rows: int = 64, rounds: int = 3) -> dict:
    from ofa_ds.data import transforms as T

    stream = _vl_stream(root, vocab, size)
    _pass(stream, 16, 0)  # warm caches (PIL, tokenizer)
    rates = {"before": [], "after": []}
    try:
        for r in range(rounds):
            for label, fast in (("before", False), ("after", True)):
                T.use_fast_paths(fast)
                rates[label].append(rows / _pass(stream, rows, r * rows))
        stages = {}
        for label, fast in (("before", False), ("after", True)):
            T.use_fast_paths(fast)
            clock = StageClock()
            with clock.patched():
                total = _pass(stream, rows, 0, clock)
            timed = sum(clock.seconds.values())
            stages[label] = {**{k: clock.seconds.get(k, 0.0) / rows * 1e3 for k in STAGES[:-1]},
                             "other": max(total - timed, 0.0) / rows * 1e3}
    finally:
        T.use_fast_paths(True)
    return {"rows_per_s": {k: statistics.median(v) for k, v in rates.items()}, "all_rates": rates,
            "ms_per_row": stages, "rows": rows, "rounds": rounds}


def print_report(r: dict, step_ms: tuple[float, ...] = (100.0, 40.0), rows_per_step: int = 8) -> None:
    before, after = r["rows_per_s"]["before"], r["rows_per_s"]["after"]
    print(f"VL rows/s per core (1 process, 1 torch thread; median of {r['rounds']} interleaved rounds of "
          f"{r['rows']} rows): before {before:.1f}, after {after:.1f} ({after / before:.2f}x)")
    print(f"{'stage':<14}{'before ms/row':>14}{'after ms/row':>14}")
    for k in STAGES:
        print(f"{k:<14}{r['ms_per_row']['before'][k]:>14.2f}{r['ms_per_row']['after'][k]:>14.2f}")
    tb, ta = (sum(r["ms_per_row"][x].values()) for x in ("before", "after"))
    print(f"{'total':<14}{tb:>14.2f}{ta:>14.2f}")
    for ms in step_ms:
        need = rows_per_step / (ms / 1e3)
        print(f"a {ms:.0f} ms GPU step of {rows_per_step} VL rows needs {need:.0f} rows/s: "
              f"{need / after:.1f} loader workers (cores) for the VL stream (before: {need / before:.1f})")
