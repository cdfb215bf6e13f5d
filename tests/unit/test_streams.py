"""The four pretraining streams, checked token for token against OFA's vocabulary (spec §3)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ofa_ds.data import streams as S
from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.text_infilling import poisson_span_probs, span_lengths
from ofa_ds.data.tsv import TSVFile
from ofa_ds.data.vocab import Vocabulary

RED = (220, 40, 40)
RED_NORMALISED = torch.tensor(RED) / 255 * 2 - 1


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir) -> Vocabulary:
    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture
def negatives(tmp_path) -> S.NegativeSamples:
    (tmp_path / "all_captions.txt").write_text("a cat on a mat.\n\nthe sky is blue.\n")
    (tmp_path / "object.txt").write_text("dog\nhorse\ncar\n")
    (tmp_path / "type2ans.json").write_text(json.dumps(
        {"how many": ["1", "2", "3"], "yes/no": ["yes", "no"], "other": ["red", "blue", "left"]}))
    return S.NegativeSamples.from_dir(tmp_path)


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def tsv(tmp_path, name: str, rows, cols=None) -> TSVFile:
    path = tmp_path / name
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    return TSVFile(path, cols)


def vl_stream(tmp_path, vocab, negatives, rows, **kw) -> S.VisionLanguageStream:
    return S.VisionLanguageStream(tsv(tmp_path, "vl.tsv", rows), vocab, negatives, **kw)


def red_box_image(w, h, box) -> Image.Image:
    img = Image.new("RGB", (w, h), (235, 235, 235))
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=RED)
    return img


def ids(t: torch.Tensor) -> list[int]:
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# Prompts and token ids


def test_prompts_are_verbatim():
    # spec §3.3, including leading spaces (two for grounded captioning)
    assert S.PROMPT_CAPTION == " what does the image describe?"
    assert S.PROMPT_ITM_CAPTION.format("c") == ' does the image describe " c "?'
    assert S.PROMPT_ITM_QA.format("q", "a") == ' what is the answer to question " q ". is " a "?'
    assert S.PROMPT_GROUNDING.format("t") == ' which region does the text " t " describe?'
    assert S.PROMPT_GROUNDED_CAPTION == "  what does the region describe? region:"
    assert S.PROMPT_TEXT_INFILLING == ' what is the complete text of " "?'
    assert S.PROMPT_IMAGE_INFILLING == " what is the image in the middle part?"
    assert S.PROMPT_DETECTION == " what are the objects in the image?"


def test_caption_and_itm_token_ids_equal_ofa(tmp_path, vocab, negatives):
    caption = "a man riding a horse on the beach."
    stream = vl_stream(tmp_path, vocab, negatives,
                       [["u1", b64(Image.new("RGB", (500, 400))), caption, "", "", "", "coco", "caption"]])
    seen = set()
    for seed in range(20):
        main, itm = stream.samples(0, np.random.default_rng(seed))
        # spec §9 worked example
        assert ids(main.source) == [0, 99, 473, 5, 2274, 6190, 116, 2]
        assert ids(main.target) == [10, 313, 5793, 10, 5253, 15, 5, 4105, 4, 2]
        assert ids(main.prev_output_tokens) == [0, 10, 313, 5793, 10, 5253, 15, 5, 4105, 4]
        assert main.patch_image.shape == (3, 384, 384) and main.patch_mask and main.code_mask is None
        assert itm.patch_image is main.patch_image and itm.conf == main.conf == 1.0
        if ids(itm.target) == [4420, 2]:  # " yes": the positive statement
            assert ids(itm.source) == [0, *vocab.encode(f' does the image describe " {caption} "?'), 2]
            seen.add("yes")
        else:
            assert ids(itm.target) == [117, 2]  # " no"
            seen.add("no")
    assert seen == {"yes", "no"}


def test_other_prompt_token_ids(vocab):
    # ' what is the complete text of " "?' = Ġwhat Ġis Ġthe Ġcomplete Ġtext Ġof Ġ" Ġ" ?
    whole = vocab.encode(S.PROMPT_TEXT_INFILLING)
    assert whole == [99, 16, 5, 1498, 2788, 9, 22, 22, 116]
    from ofa_ds.data.streams.common import PROMPT_TEXT_INFILLING_HEAD, PROMPT_TEXT_INFILLING_TAIL
    assert vocab.encode(PROMPT_TEXT_INFILLING_HEAD) == whole[:-2]
    assert vocab.encode(PROMPT_TEXT_INFILLING_TAIL) == whole[-2:]
    # two leading spaces: a lone "Ġ" (1437) before "Ġwhat" (99), kept for checkpoint parity
    assert vocab.encode(S.PROMPT_GROUNDED_CAPTION)[:2] == [1437, 99]
    assert vocab.encode(" yes") == [4420] and vocab.encode(" no") == [117]


def test_vqa_sample_takes_the_best_answer_and_its_confidence(tmp_path, vocab, negatives):
    stream = vl_stream(tmp_path, vocab, negatives, [["q1", b64(Image.new("RGB", (300, 300))), "",
                                                    "Is the-cat asleep", "0.6|!+no&&0.9|!+yes", "", "vqa", "qa"]])
    main, itm = stream.samples(0, np.random.default_rng(0))
    assert ids(main.source) == [0, *vocab.encode(" is the cat asleep"), 2]  # pre_question; no "?" added
    assert ids(main.target) == [4420, 2] and main.conf == itm.conf == pytest.approx(0.9)
    assert vocab.decode(itm.source).startswith(' what is the answer to question " is the cat asleep ". is "')


def test_cc12m_caption_does_not_train_its_first_two_tokens(tmp_path, vocab, negatives):
    stream = vl_stream(tmp_path, vocab, negatives, [["c", b64(Image.new("RGB", (300, 300))),
                                                    "a man riding a horse", "", "", "", "cc12m", "caption"]])
    main, _ = stream.samples(0, np.random.default_rng(0))
    assert ids(main.target)[:2] == [1, 1] and ids(main.target)[-1] == 2
    assert ids(main.prev_output_tokens) == [0, *vocab.encode(" a man riding a horse")]


def test_grounding_bins_point_at_the_region(tmp_path, vocab, negatives):
    box = (300, 120, 420, 200)
    stream = vl_stream(tmp_path, vocab, negatives, [["g", b64(red_box_image(500, 400, box)), "The red box",
                                                    "", ",".join(map(str, box)), "", "refcoco", "visual_grounding"]])
    for seed in range(5):
        grounding, described = stream.samples(0, np.random.default_rng(seed))
        assert ids(grounding.source) == [0, *vocab.encode(' which region does the text " the red box " describe?'), 2]
        bins = ids(grounding.target)[:4]
        assert ids(grounding.target)[4:] == [2] and all(vocab.bin_offset <= b < len(vocab) for b in bins)
        assert ids(described.source) == [0, *vocab.encode(S.PROMPT_GROUNDED_CAPTION), *bins, 2]
        assert ids(described.target) == [*vocab.encode(" the red box"), 2]
        # bin b is pixel b/999·512 of the 384×384 crop: the region's centre must be red there
        x0, y0, x1, y1 = [(b - vocab.bin_offset) / 999 * 512 for b in bins]
        assert x1 <= 384 and y1 <= 384
        centre = grounding.patch_image[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert torch.allclose(centre, RED_NORMALISED, atol=0.05)


def test_negative_answers_follow_ofa_rules(negatives):
    rng = np.random.default_rng(0)
    # conf > u + 0.1: same type (±1 or another count, never "2" itself); else the 'other' list
    counts = {negatives.answer("2", 1.0, rng) for _ in range(200)}
    assert counts == {"1", "3", "red", "blue"}  # "left" (last) only replaces a draw equal to the answer
    others = {negatives.answer("purple", 1.0, rng) for _ in range(200)}
    assert others <= {"red", "blue", "left"}          # unknown answer -> the 'other' list
    captions = {negatives.caption("a horse on a beach", "horse", rng) for _ in range(200)}
    assert "a dog on a beach" in captions and "a cat on a mat." in captions


# ---------------------------------------------------------------------------------------------
# Text infilling


def test_poisson_span_distribution():
    p = poisson_span_probs(3.0)
    assert len(p) == 18 and p.sum() == pytest.approx(1.0)  # j = 0..17, spec §3.5
    lengths, inserts = span_lengths(7, p, np.random.default_rng(0))
    assert lengths.sum() == 7 and (lengths > 0).all() and inserts >= 0


def test_whole_word_masking_removes_whole_words(vocab):
    text = " the unbelievably quick brown foxes jumped over extraordinarily lazy dogs " * 3
    tokens = torch.tensor([0, *vocab.encode(text.strip(" ") and text), 2])
    word_start = vocab.is_word_start()
    for seed in range(20):
        out = S.whole_word_span_mask(tokens, word_start, vocab.mask, np.random.default_rng(seed))
        assert out[0] == 0 and out[-1] == 2 and (out == vocab.mask).any()
        # after a <mask> comes a word start (or eos/another mask): spans cover whole words
        after = out[1:][out[:-1] == vocab.mask]
        assert all(word_start[t] or t in (2, vocab.mask) for t in after.tolist())
        # the rest is the original in order
        kept = [t for t in out.tolist() if t != vocab.mask]
        it = iter(tokens.tolist())
        assert all(t in it for t in kept)
    again = S.whole_word_span_mask(tokens, word_start, vocab.mask, np.random.default_rng(3))
    assert torch.equal(again, S.whole_word_span_mask(tokens, word_start, vocab.mask, np.random.default_rng(3)))


def test_text_infilling_sample(tmp_path, vocab):
    stream = S.TextInfillingStream(tsv(tmp_path, "text.tsv", [["t1", "The Quick brown fox jumps over the lazy dog."],
                                                             ["t2", "   "]]), vocab)
    sample = stream.sample(0, np.random.default_rng(0))
    body = vocab.encode(" the quick brown fox jumps over the lazy dog.")
    assert ids(sample.target) == [*body, 2] and ids(sample.prev_output_tokens) == [0, *body]
    src = ids(sample.source)
    assert src[:8] == [0, 99, 16, 5, 1498, 2788, 9, 22] and src[-3:] == [22, 116, 2]
    assert vocab.mask in src
    assert sample.patch_mask is False and sample.code_mask is False and sample.conf == 2.0
    assert sample.patch_image.shape == (3, 256, 256) and sample.patch_image.abs().sum() == 0
    with pytest.raises(BadRow, match="empty text"):
        stream.sample(1, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# Image infilling and detection


def test_image_infilling_sample(tmp_path, vocab):
    img = Image.new("RGB", (256, 256), (255, 255, 255))
    codes = list(range(256))
    stream = S.ImageInfillingStream(tsv(tmp_path, "img.tsv", [
        ["i1", b64(img), " ".join(map(str, codes))],
        ["i2", b64(img), "1 2 3"],
        ["i3", b64(Image.new("RGB", (200, 256))), " ".join(map(str, codes))],
    ]), vocab)
    sample = stream.sample(0, np.random.default_rng(0))
    assert ids(sample.source) == [0, *vocab.encode(" what is the image in the middle part?"), 2]
    assert ids(sample.target) == [50265 + c for c in codes] + [2]
    assert sample.code_mask is True and sample.patch_mask is True and sample.conf == 2.0
    assert sample.patch_image[:, 64:192, 64:192].abs().sum() == 0 and (sample.patch_image[:, :64] == 1).all()
    with pytest.raises(BadRow, match="bad codes"):
        stream.sample(1, np.random.default_rng(0))
    with pytest.raises(BadRow, match="wrong image size"):
        stream.sample(2, np.random.default_rng(0))


def test_detection_target_lists_boxes_and_names(tmp_path, vocab):
    box = (40, 30, 280, 210)  # large enough that jitter never crops it away entirely
    label = f"{','.join(map(str, box))},7,Red Box, big&&0,0,10,10,3,dot"
    stream = S.DetectionStream(tsv(tmp_path, "det.tsv", [["d1", b64(red_box_image(320, 240, box)), label]]), vocab)
    name = vocab.encode(" Red Box, big")  # split on the first five commas only; case kept
    for seed in range(10):
        sample = stream.sample(0, np.random.default_rng(seed))
        tgt = ids(sample.target)
        assert ids(sample.source) == [0, *vocab.encode(" what are the objects in the image?"), 2]
        assert sample.patch_image.shape == (3, 256, 256) and sample.code_mask is False and sample.conf == 2.0
        first = tgt[:4]
        assert all(vocab.bin_offset <= b <= vocab.bin_offset + 500 for b in first)  # 256 px -> bins <= 500
        assert tgt[4:4 + len(name)] == name and tgt[-1] == 2
        x0, y0, x1, y1 = [(b - vocab.bin_offset) / 999 * 512 for b in first]
        centre = sample.patch_image[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert torch.allclose(centre, RED_NORMALISED, atol=0.05)


@pytest.mark.parametrize("label, reason", [
    ("0,0,400,10,1,cat", "box outside image"),
    ("5,5,5,9,1,cat", "empty box"),
    ("1,2,3,cat", "bad object"),
    ("", "no objects"),
])
def test_detection_bad_labels(tmp_path, vocab, label, reason):
    stream = S.DetectionStream(tsv(tmp_path, "det.tsv", [["d", b64(Image.new("RGB", (320, 240))), label]]), vocab)
    with pytest.raises(BadRow, match=reason):
        stream.sample(0, np.random.default_rng(0))


def test_wrong_selected_cols_is_a_config_error(tmp_path, vocab, negatives):
    with pytest.raises(ValueError, match="expected 8"):
        S.VisionLanguageStream(tsv(tmp_path, "vl.tsv", [["a", "b", "c"]], cols="0,1,2"), vocab, negatives)
    # Without selected_cols the format (8 fields) sets the width, not the rows: a 3-column row is bad.
    stream = S.VisionLanguageStream(tsv(tmp_path, "vl.tsv", [["a", "b", "c"]]), vocab, negatives)
    with pytest.raises(BadRow, match=r"row 0: wrong column count \(expected 8, got 3\)"):
        stream.samples(0, np.random.default_rng(0))
