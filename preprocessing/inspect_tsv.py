"""``ofa-ds inspect FILE.tsv``: row count, a column check against a named format, the first rows
decoded (image size, text, boxes, codes), and optionally a contact sheet PNG with boxes drawn.

Without ``--format`` the format is guessed: the formats whose column count and first-row check
fit (several may, e.g. caption and refcoco both have five columns: then name one).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.tsv import TSVFile, decode_base64_image
from preprocessing.formats import FORMATS, Format, get_format

_SHOWN = 100  # characters of a text field shown per row


def parse_boxes(fmt: Format, value: str) -> list[tuple[list[float], str]]:
    """``[(box, label)]`` of a box column; ValueError on a malformed one."""
    if fmt.box_kind == "region":
        box = [float(v) for v in value.split(",")]
        if len(box) != 4:
            raise ValueError(f"region {value!r} is not x0,y0,x1,y1")
        return [(box, "")]
    out = []
    for item in value.split("&&"):
        parts = item.split(",", 5)
        if len(parts) != 6:
            raise ValueError(f"object {item!r} is not x0,y0,x1,y1,cat_id,name")
        out.append(([float(v) for v in parts[:4]], parts[5]))
    return out


def _outside(boxes, image, column: str) -> list[str]:
    if image is None:
        return []
    return [f"{column}: box {box} not inside the {image.width}x{image.height} image"
            for box, _ in boxes
            if box[0] < 0 or box[1] < 0 or box[2] > image.width or box[3] > image.height
            or box[2] <= box[0] or box[3] <= box[1]]


def check_row(fmt: Format, fields: list[str], *, decode_image: bool = True) -> tuple[list[str], dict]:
    """(problems, decoded) for one row's raw fields against ``fmt``."""
    problems: list[str] = []
    info: dict = {}
    if len(fields) != fmt.num_columns:
        return [f"{len(fields)} columns, {fmt.name} has {fmt.num_columns}: {', '.join(fmt.columns)}"], info
    row = dict(zip(fmt.columns, fields))
    image = None
    if fmt.image and decode_image:
        try:
            image = decode_base64_image(row[fmt.image])
            info["image"] = image
            info["image_size"] = image.size
        except BadRow as e:
            problems.append(f"{fmt.image}: {e.reason}")
    for col in fmt.text:
        info[col] = row[col]
    if fmt.labels is not None and row["label"] not in fmt.labels:
        problems.append(f"label: {row['label']!r} not in {sorted(fmt.labels)}")
    if fmt.name == "imagenet" and not row["label"].isdigit():
        problems.append(f"label: {row['label']!r} is not a class index")
    if fmt.boxes and not row[fmt.boxes].strip():
        problems.append(f"{fmt.boxes}: empty")
    elif fmt.boxes:
        try:
            info["boxes"] = parse_boxes(fmt, row[fmt.boxes])
        except ValueError as e:
            problems.append(f"{fmt.boxes}: {e}")
        problems += _outside(info.get("boxes", []), image, fmt.boxes)
    if fmt.codes:
        try:
            codes = [int(c) for c in row[fmt.codes].split()]
            info["codes"] = len(codes)
            expected = fmt.num_codes
            if fmt.name == "image-infilling" and image is not None:
                # a 2C x 2C image holds the (C/8)^2 codes of its centre (C = 128 in OFA)
                expected = (image.width // 16) ** 2
                if image.width != image.height:
                    problems.append(f"{fmt.image}: {image.width}x{image.height} is not square")
            if expected and len(codes) != expected:
                problems.append(f"{fmt.codes}: {len(codes)} codes, expected {expected}")
            if codes and (min(codes) < 0 or max(codes) >= 8192):
                problems.append(f"{fmt.codes}: ids outside [0, 8192)")
        except ValueError:
            problems.append(f"{fmt.codes}: not integers")
    if fmt.name == "vqa" and row["answers"]:
        for item in row["answers"].split("&&"):
            conf, sep, ans = item.partition("|!+")
            try:
                float(conf)
            except ValueError:
                sep = ""
            if not sep or not ans:
                problems.append(f"answers: {item!r} is not conf|!+answer")
    if fmt.name == "vision-language" and row["type"] not in ("caption", "qa", "visual_grounding"):
        problems.append(f"type: {row['type']!r} is not caption, qa or visual_grounding")
    if fmt.name == "vision-language" and row["type"] == "visual_grounding":  # refs holds the region
        try:
            info["boxes"] = parse_boxes(get_format("refcoco"), row["refs"])
        except ValueError as e:
            problems.append(f"refs: {e}")
        problems += _outside(info.get("boxes", []), image, "refs")
    return problems, info


def guess_formats(fields: list[str]) -> list[str]:
    fits = [f for f in FORMATS.values() if not check_row(f, fields)[0]]
    if any(f.image for f in fits):  # a decodable image column beats reading it as text
        fits = [f for f in fits if f.image]
    return [f.name for f in fits]


def contact_sheet(entries, path, *, thumb: int = 256, columns: int = 4) -> Path:
    """Thumbnails (boxes drawn in red, first text line below) of ``[(image, boxes, text)]``."""
    from PIL import Image, ImageDraw
    rows = -(-len(entries) // columns)
    caption_h = 28
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (img, boxes, text) in enumerate(entries):
        x, y = (k % columns) * thumb, (k // columns) * (thumb + caption_h)
        if img is not None:
            s = thumb / max(img.size)
            small = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))))
            sheet.paste(small, (x, y))
            for box, label in boxes:
                x0, y0, x1, y1 = (v * s for v in box)
                draw.rectangle([x + x0, y + y0, x + x1, y + y1], outline=(255, 0, 0), width=2)
                if label:
                    draw.text((x + x0 + 2, y + y0 + 1), label[:20], fill=(255, 0, 0))
        draw.text((x + 2, y + thumb + 2), text[:40], fill=(0, 0, 0))
        draw.text((x + 2, y + thumb + 14), text[40:80], fill=(0, 0, 0))
    path = Path(path)
    sheet.save(path)
    return path


def inspect(path, fmt_name: str | None = None, *, show: int = 3, check: int = 100,
            sheet: str | None = None, sheet_rows: int = 16, out=sys.stdout) -> int:
    """Print the report; returns the number of problems found (0: the file fits the format)."""
    tsv = TSVFile(path, num_columns=None)
    print(f"{path}: {len(tsv)} rows", file=out)
    if not len(tsv):
        return 0
    first = tsv._read_line(0).split("\t")
    if fmt_name is None:
        candidates = guess_formats(first)
        if len(candidates) != 1:
            print(f"format: {'ambiguous: ' + ', '.join(candidates) if candidates else 'no known format fits'}"
                  f" ({len(first)} columns); pass --format", file=out)
            return 1
        fmt_name = candidates[0]
        print(f"format: {fmt_name} (guessed)", file=out)
    fmt = get_format(fmt_name)
    n_check = len(tsv) if check == 0 else min(check, len(tsv))
    problems, entries = 0, []
    for i in range(n_check):
        try:
            fields = tsv._read_line(i).split("\t")
        except BadRow as e:
            print(f"  row {i}: {e.reason}", file=out)
            problems += 1
            continue
        want_image = i < max(show, sheet_rows if sheet else 0)
        issues, info = check_row(fmt, fields, decode_image=True)
        for issue in issues:
            problems += 1
            if problems <= 20:
                print(f"  row {i}: {issue}", file=out)
        if i < show:
            shown = {k: (v[:_SHOWN] + "..." if isinstance(v, str) and len(v) > _SHOWN else v)
                     for k, v in info.items() if k != "image"}
            print(f"  row {i}: {shown}", file=out)
        if sheet and want_image and len(entries) < sheet_rows:
            text = next((info[c] for c in fmt.text if info.get(c)), "") or \
                ", ".join(label for _, label in info.get("boxes", []) if label)
            entries.append((info.get("image"), info.get("boxes", []), text))
    print(f"checked {n_check} rows against {fmt.name} ({', '.join(fmt.columns)}): "
          f"{problems} problem(s)", file=out)
    if sheet and entries:
        print(f"contact sheet: {contact_sheet(entries, sheet)}", file=out)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ofa-ds inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("tsv", nargs="?")
    p.add_argument("--format", help="expected format (default: guessed); --formats lists them")
    p.add_argument("--formats", action="store_true", help="list the known formats and exit")
    p.add_argument("--rows", type=int, default=3, help="rows to print decoded (default 3)")
    p.add_argument("--check", type=int, default=100, help="rows to check (default 100; 0: all)")
    p.add_argument("--contact-sheet", metavar="PNG", help="write thumbnails with boxes drawn")
    p.add_argument("--sheet-rows", type=int, default=16)
    a = p.parse_args(argv)
    if a.formats or not a.tsv:
        for f in FORMATS.values():
            print(f"{f.name:16s} {', '.join(f.columns)}" + (f"  -- {f.doc}" if f.doc else ""))
        return 0
    try:
        problems = inspect(a.tsv, a.format, show=a.rows, check=a.check, sheet=a.contact_sheet,
                           sheet_rows=a.sheet_rows)
    except ValueError as e:
        print(f"ofa-ds inspect: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0
