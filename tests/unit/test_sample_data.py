"""``ofa-ds make-sample-data``: runs offline, writes OFA's formats, and says only true things."""
from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from ofa_ds.data import streams as S
from ofa_ds.data.vocab import Vocabulary
from preprocessing import make_sample_data
from preprocessing.scenes import COLORS, SHAPES, block_codes

FINETUNE_COLUMNS = {
    "caption": 5, "vqa": 6, "refcoco": 5, "snli_ve": 6, "imagenet": 3, "gigaword": 2, "image_gen": 3,
    "glue/cola": 3, "glue/sst2": 2, "glue/mrpc": 3, "glue/qqp": 6, "glue/mnli": 3, "glue/rte": 4, "glue/qnli": 4,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    start = time.perf_counter()
    rc = make_sample_data.main([str(out), "--vl-rows", "60", "--text-rows", "10", "--image-rows", "6",
                                "--detection-rows", "10", "--finetune-rows", "4", "--vocab-size", "400"])
    assert rc == 0 and time.perf_counter() - start < 60
    return out


def rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def image(field: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(field))).convert("RGB"))


def centre_colour(img: np.ndarray, box) -> tuple:
    x0, y0, x1, y1 = box
    return tuple(img[(y0 + y1) // 2, (x0 + x1) // 2])


def test_layout_and_column_counts(root):
    pre = root / "pretrain"
    assert len(rows(pre / "vision_language_examples.tsv")) == 60
    assert {len(r) for r in rows(pre / "vision_language_examples.tsv")} == {8}
    assert {len(r) for r in rows(pre / "text_examples.tsv")} == {2}
    assert {len(r) for r in rows(pre / "image_examples.tsv")} == {3}
    assert {len(r) for r in rows(pre / "detection_examples.tsv")} == {3}
    type2ans = json.loads((pre / "negative_sample" / "type2ans.json").read_text())
    assert "other" in type2ans and (pre / "negative_sample" / "object.txt").read_text().strip()
    for task, n in FINETUNE_COLUMNS.items():
        for split in ("train", "valid", "test"):
            assert {len(r) for r in rows(root / "finetune" / task / f"{split}.tsv")} == {n}, (task, split)
    assert (root / "finetune" / "vqa" / "trainval_ans2label.pkl").is_file()
    assert {len(r[1].split()) for r in rows(root / "finetune" / "image_gen" / "train.tsv")} == {1024}


def test_grounding_boxes_and_answers_agree_with_the_pixels(root):
    vl = rows(root / "pretrain" / "vision_language_examples.tsv")
    kinds = {r[7] for r in vl}
    assert kinds == {"caption", "qa", "visual_grounding"}
    for uid, img_b64, caption, question, refs, _, _, kind in vl:
        img = image(img_b64)
        present = set(map(tuple, np.unique(img.reshape(-1, 3), axis=0).tolist()))
        if kind == "visual_grounding":
            box = [int(v) for v in refs.split(",")]
            colour = centre_colour(img, box)
            assert colour in {tuple(c) for c in COLORS.values()}, uid
            named = [c for c in COLORS if f" {c} " in f" {caption} "]
            assert not named or colour == COLORS[named[0]], (uid, caption)
        elif kind == "qa":
            answer = refs.split("|!+")[1]
            if question.startswith("what color"):
                assert COLORS[answer] in present, (uid, question, answer)
            m = re.match(r"is there an? (\w+) (\w+)\?", question)
            if m and answer == "yes":
                assert COLORS[m.group(1)] in present
        else:
            for colour, shape in re.findall(r"an? (\w+) (circle|square|triangle)", caption):
                assert COLORS[colour] in present, (uid, caption)


def test_detection_labels_agree_with_the_pixels(root):
    for _, img_b64, label in rows(root / "pretrain" / "detection_examples.tsv"):
        img = image(img_b64)
        for obj in label.split("&&"):
            x0, y0, x1, y1, _, name = obj.split(",", 5)
            box = [int(x0), int(y0), int(x1), int(y1)]
            colour, shape = name.split()
            assert centre_colour(img, box) == COLORS[colour] and shape in SHAPES
            # the top-left corner is filled for squares only
            assert (tuple(img[box[1], box[0]]) == COLORS[colour]) == (shape == "square"), name


def test_image_codes_are_the_stand_in_quantiser_of_the_centre(root):
    for _, img_b64, code in rows(root / "pretrain" / "image_examples.tsv"):
        img = Image.open(io.BytesIO(base64.b64decode(img_b64)))
        assert img.size == (256, 256)
        codes = [int(c) for c in code.split()]
        assert len(codes) == 256 and max(codes) < 8192
        assert codes == block_codes(img.crop((64, 64, 192, 192))).tolist()


def test_trained_vocabulary_encodes_every_prompt_without_unk(root):
    vocab = Vocabulary.from_dir(root / "vocab")
    assert len(vocab) == 4 + len((root / "vocab" / "dict.txt").read_text().splitlines()) + 1 + 8192 + 1000
    for prompt in (S.PROMPT_CAPTION, S.PROMPT_GROUNDED_CAPTION, S.PROMPT_TEXT_INFILLING, S.PROMPT_DETECTION,
                   S.PROMPT_IMAGE_INFILLING, S.PROMPT_ITM_QA.format("how many shapes are there?", "3")):
        ids = vocab.encode(prompt)
        assert vocab.unk not in ids and vocab.decode(ids) == prompt
