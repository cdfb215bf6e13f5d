"""Bad input that used to slip through or be misreported: a malformed first row, truncated
images, streams without a good row, counts of cycled reads, messages that point at warnings
nobody saw, and a malformed negative-sample file."""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ofa_ds.data.bad_rows import BadRow, BadRowPolicy, NoGoodRows
from ofa_ds.data.pretrain import build_pretrain_loader
from ofa_ds.data.streams import NegativeSamples
from ofa_ds.data.tsv import decode_base64_image
from ofa_ds.data.vocab import Vocabulary
from preprocessing.make_sample_data import pretrain_config, write_sample_data

CODE_SIZE = 16  # the sample data's image codes: (16/8)^2 = 4 per image


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root, vl_rows=32, text_rows=4, image_rows=4, detection_rows=4, finetune_rows=1,
                      code_image_size=CODE_SIZE, vocab_size=300)
    return root, Vocabulary.from_dir(root / "vocab")


def loader_for(data, *, num_workers=0, **cfg):
    root, vocab = data
    cfg = {"patch_image_size": 32, "code_image_size": CODE_SIZE, **cfg}
    return build_pretrain_loader(pretrain_config(root, **cfg), vocab, seed=3, micro_batch_vl_rows=8,
                                 num_workers=num_workers)


def vl_rows(data, n=16) -> list[list[str]]:
    path = data[0] / "pretrain" / "vision_language_examples.tsv"
    return [line.split("\t") for line in path.read_text().splitlines()][:n]


def write_rows(path: Path, rows) -> str:
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    return str(path)


def half_png_b64() -> str:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    raw = buf.getvalue()
    return base64.b64encode(raw[: len(raw) // 2]).decode()


def samples_seen(batches) -> int:
    return sum(1 for vl, _ in batches for i in vl["id"] if i != "<placeholder>")


# ------------------------------------------------------------------------------ item 3
def test_a_malformed_first_row_does_not_discard_the_good_ones(data, tmp_path):
    rows = vl_rows(data)
    rows[0] = rows[0] + ["an extra column"]
    path = write_rows(tmp_path / "vl.tsv", rows)
    loader = loader_for(data, vision_language=path)
    batches = list(loader)
    assert loader.policy.summary(1)[path] == {"wrong column count": 1}
    assert samples_seen(batches) == 2 * 15  # all 15 good rows trained
    with pytest.raises(BadRow, match=r"row 0: wrong column count \(expected 8, got 9\)"):
        list(loader_for(data, vision_language=path, strict=True))  # strict blames the bad row


# ------------------------------------------------------------------------------ item 4
def test_a_truncated_image_is_undecodable(data, tmp_path):
    with pytest.raises(BadRow, match="undecodable image") as info:
        decode_base64_image(half_png_b64(), file="x.tsv", row=3)
    assert "truncated" in str(info.value)
    rows = vl_rows(data)
    rows[5][1] = half_png_b64()
    path = write_rows(tmp_path / "vl.tsv", rows)
    loader = loader_for(data, vision_language=path)
    list(loader)
    assert loader.policy.summary(1)[path] == {"undecodable image": 1}
    with pytest.raises(BadRow, match="row 5, field 'image': undecodable image"):
        list(loader_for(data, vision_language=path, strict=True))


# ------------------------------------------------------------------------------ items 5, 7
def test_no_good_vision_language_row_is_fatal_and_names_the_first_of_each_reason(data, tmp_path, caplog):
    rows = [r[:7] + ["ocr"] for r in vl_rows(data)]  # every row: unknown type
    rows[9] = rows[9][:3]  # and one with a wrong column count
    path = write_rows(tmp_path / "vl.tsv", rows)
    loader = loader_for(data, vision_language=path)
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"), pytest.raises(NoGoodRows) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(path) and "no usable vision-language row in epoch 1 (16 bad rows" in message
    # The first of each reason (rows are read in shuffled order) is named, although the
    # 'unknown type' warnings were rate-limited.
    assert "field 'type': unknown type ('ocr'" in message and "row 9: wrong column count" in message
    assert "suppressed" in caplog.text


@pytest.mark.parametrize("workers", [0, 1])
def test_an_extra_stream_without_a_good_row_is_fatal_naming_file_and_reason(data, workers):
    # The sample's image codes are for 16-px centres; read as 32-px ones every row is bad.
    loader = loader_for(data, code_image_size=2 * CODE_SIZE, num_workers=workers)
    with pytest.raises(NoGoodRows) as info:
        list(loader)
    message = str(info.value)
    assert "image_examples.tsv: every row of the image stream is bad (4 rows read)" in message
    assert "field 'code': bad codes (expected 16, got 4)" in message
    assert "see the warnings above" not in message


def test_bench_data_names_the_bad_rows(data):
    from ofa_ds.data.bench import main as bench_main

    root, _ = data
    with pytest.raises(NoGoodRows, match=r"field 'code': bad codes \(expected 16, got 4\)"):
        bench_main(["--data", str(root), "--workers", "0", "--batches", "1", "--patch-image-size", "32",
                    "--code-image-size", str(2 * CODE_SIZE)])


def test_the_first_bad_row_of_each_reason_is_always_logged(caplog):
    with pytest.raises(ValueError, match="warn_limit must be >= 1"):
        BadRowPolicy(warn_limit=0)
    policy = BadRowPolicy(warn_limit=1)
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
        for i in range(3):
            policy.record(BadRow("a.tsv", i, "code", "bad codes", "expected 16, got 4"))
        policy.record(BadRow("a.tsv", 7, None, "wrong column count"))
    assert "a.tsv: row 0, field 'code': bad codes (expected 16, got 4)" in caplog.text
    assert "a.tsv: row 7: wrong column count" in caplog.text
    assert policy.first("a.tsv") == ("a.tsv: row 0, field 'code': bad codes (expected 16, got 4); "
                                     "a.tsv: row 7: wrong column count")


# ------------------------------------------------------------------------------ item 6
def test_a_bad_row_counts_once_per_epoch_however_often_a_cycling_stream_reads_it(data, tmp_path, caplog):
    text = write_rows(tmp_path / "text.tsv", [["t0", "hello there"], ["t1", "  "], ["t2", "good text"],
                                               ["t3", ""]])
    rows = vl_rows(data, 32)
    loader = loader_for(data, vision_language=write_rows(tmp_path / "vl.tsv", rows), text=text)
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
        list(loader)  # 4 micro-batches x 2 text samples: the 4-row text stream cycles several times
    assert loader.policy.summary(1)[text] == {"empty text": 2}
    assert loader.policy.reads(1)[text] > 2
    assert "epoch 1: skipped 2 bad rows" in caplog.text and "reads: the extra streams cycle" in caplog.text
    assert sum(f"{text}: row" in r.getMessage() for r in caplog.records) == 2  # one warning per row
    # The count per epoch survives a resume.
    state = loader.state_dict()
    again = loader_for(data, vision_language=str(tmp_path / "vl.tsv"), text=text)
    again.load_state_dict(state)
    assert again.policy.summary(1)[text] == {"empty text": 2}


# ------------------------------------------------------------------------------ item 8
@pytest.mark.parametrize("content, match", [
    ('{"other": ["red", ', "not valid JSON"),
    ('["red", "blue"]', "expected an object mapping each answer type"),
])
def test_a_malformed_type2ans_json_names_the_file(data, tmp_path, content, match):
    negative = tmp_path / "negative"
    shutil.copytree(data[0] / "pretrain" / "negative_sample", negative)
    (negative / "type2ans.json").write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        NegativeSamples.from_dir(str(negative))
    assert str(negative / "type2ans.json") in str(info.value)
    json.loads((data[0] / "pretrain" / "negative_sample" / "type2ans.json").read_text())  # the original is fine


def test_a_finetuning_split_without_a_good_row_is_fatal_naming_the_reason():
    from ofa_ds.tasks.data import SampleLoader

    def build(i):
        raise BadRow("train.tsv", i, "image", "undecodable image", "truncated")

    loader = SampleLoader(6, build, collate_fn=list, batch_size=2, rank=0, world_size=1, seed=0,
                          policy=BadRowPolicy(), path="train.tsv")
    with pytest.raises(NoGoodRows, match=r"train.tsv: no usable row found .*field 'image': undecodable image"):
        next(iter(loader))
    per_epoch = [c["train.tsv"]["undecodable image"] for c in loader.policy.state_dict()["counts"].values()]
    assert len(per_epoch) > 1 and all(n <= 6 for n in per_epoch)  # once per row per epoch, 6 rows
