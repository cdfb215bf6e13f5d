"""``ofa-ds prepare`` converters on tiny inputs in each public layout, read back through ofa-ds's
loaders; bad records counted per reason; ``--strict``; resume after a kill; ``ofa-ds inspect``."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_ds.data import streams as S
from ofa_ds.data.tsv import TSVFile, decode_base64_image
from ofa_ds.data.vocab import Vocabulary
from preprocessing import prepare
from preprocessing.engine import shard_files
from preprocessing.formats import get_format
from preprocessing.inspect_tsv import check_row, inspect
from preprocessing.scenes import random_scene

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir) -> Vocabulary:
    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> S.NegativeSamples:
    neg = tmp_path_factory.mktemp("neg")
    (neg / "all_captions.txt").write_text("a cat\n")
    (neg / "object.txt").write_text("dog\n")
    (neg / "type2ans.json").write_text(json.dumps({"other": ["red"]}))
    return S.NegativeSamples.from_dir(neg)


def vl_stream(out: Path, name: str, vocab, negatives) -> S.VisionLanguageStream:
    return S.VisionLanguageStream(TSVFile(shard_files(out, name)[0], "0,1,2,3,4,5,6,7"), vocab, negatives,
                                  patch_image_size=32)


def save_scene(path: Path, seed: int, size=(64, 48), fmt="JPEG"):
    """A scene image; returns its shapes' boxes."""
    scene = random_scene(random.Random(seed), *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.render().save(path, format=fmt)
    return scene


def corrupt(path: Path) -> None:
    data = (path.parent / "ok.jpg").read_bytes() if (path.parent / "ok.jpg").exists() else b"\xff\xd8\xff\xe0"
    path.write_bytes(data[: len(data) // 3] or b"not an image")


def run_prepare(*args) -> int:
    return prepare.main([*map(str, args), "--no-progress"])


def rows(out: Path, name: str) -> list[list[str]]:
    got = []
    for shard in shard_files(out, name):
        tsv = TSVFile(shard)
        assert Path(str(shard) + ".index.npy").exists()  # each shard carries its row index
        got += [tsv.row(i) for i in range(len(tsv))]
    return got


def summary(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.summary.json").read_text())


def raw_image(b64: str) -> bytes:
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


# ---------------------------------------------------------------------------------- captions

def karpathy_layout(root: Path):
    imgs = root / "images"
    save_scene(imgs / "train2014" / "a.jpg", 1)
    save_scene(imgs / "train2014" / "b.jpg", 2, fmt="PNG")
    save_scene(imgs / "val2014" / "c.jpg", 3)
    (imgs / "train2014" / "bad.jpg").write_bytes((imgs / "train2014" / "a.jpg").read_bytes()[:300])
    images = [
        {"filepath": "train2014", "filename": "a.jpg", "cocoid": 11, "split": "train",
         "sentences": [{"raw": "A red circle.", "sentid": 1}, {"raw": "  ", "sentid": 2}]},
        {"filepath": "train2014", "filename": "b.jpg", "cocoid": 12, "split": "train",
         "sentences": [{"raw": "Shapes\ton grey.", "sentid": 3}]},
        {"filepath": "train2014", "filename": "gone.jpg", "cocoid": 13, "split": "train",
         "sentences": [{"raw": "lost", "sentid": 4}]},
        {"filepath": "train2014", "filename": "bad.jpg", "cocoid": 14, "split": "train",
         "sentences": [{"raw": "broken", "sentid": 5}]},
        {"filepath": "val2014", "filename": "c.jpg", "cocoid": 15, "split": "val",
         "sentences": [{"raw": "one", "sentid": 6}, {"raw": "two", "sentid": 7}]},
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    return root / "dataset_coco.json", imgs


def test_coco_captions_rows_bad_records_and_strict(tmp_path, capsys):
    ann, imgs = karpathy_layout(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("coco-captions", "--annotations", ann, "--images", imgs, "--out", out, "--workers", 0) == 0
    got = rows(out, "coco-captions-train")
    assert [r[:4] for r in got] == [["1", "11", "A red circle.", ""], ["3", "12", "Shapes on grey.", ""]]
    # kept byte for byte: the PNG stays that PNG
    assert raw_image(got[1][4]) == (imgs / "train2014" / "b.jpg").read_bytes()
    s = summary(out, "coco-captions-train")
    assert s["rows"] == 2 and s["records"] == 4
    assert s["skipped"] == {"empty caption": 1, "missing file": 1, "corrupt image": 1}
    assert "gone.jpg" in s["examples"]["missing file"][0]
    assert not check_row(get_format("caption"), got[0])[0]

    # evaluation split: one row per image, references joined by &&; re-encoded on request
    assert run_prepare("coco-captions", "--annotations", ann, "--images", imgs, "--out", out, "--split", "val",
                       "--workers", 0, "--max-side", 32, "--jpeg-quality", 80) == 0
    (val,) = rows(out, "coco-captions-val")
    assert val[:3] == ["15", "15", "one&&two"] and decode_base64_image(val[4]).size == (32, 24)

    assert run_prepare("coco-captions", "--annotations", ann, "--images", imgs, "--out", out, "--split", "val",
                       "--workers", 0, "--to", "vision-language", "--name", "vl") == 0
    assert [r[2] for r in rows(out, "vl")] == ["one", "two"]  # pretraining: one row per caption

    # --strict: the first bad record (the empty second caption of a.jpg) stops the run, named
    assert run_prepare("coco-captions", "--annotations", ann, "--images", imgs, "--out", tmp_path / "strict",
                       "--workers", 0, "--strict") == 1
    assert "a.jpg, field 'caption 2': empty caption" in capsys.readouterr().err


def test_official_caption_annotations(tmp_path):
    save_scene(tmp_path / "img" / "x.jpg", 4)
    ann = {"images": [{"id": 5, "file_name": "x.jpg"}],
           "annotations": [{"id": 50, "image_id": 5, "caption": "first"}, {"id": 51, "image_id": 5, "caption": "second"}]}
    (tmp_path / "captions_train2014.json").write_text(json.dumps(ann))
    assert run_prepare("coco-captions", "--annotations", tmp_path / "captions_train2014.json", "--images",
                       tmp_path / "img", "--out", tmp_path / "o", "--workers", 0, "--rows-per", "image", "--merge") == 0
    assert [r[:3] for r in rows(tmp_path / "o", "coco-captions-train")] == [["5", "5", "first&&second"]]
    merged = TSVFile(tmp_path / "o" / "coco-captions-train.tsv", num_columns=5)
    assert merged.row(0) == rows(tmp_path / "o", "coco-captions-train")[0]


# --------------------------------------------------------------------------------------- VQA

def test_answer_normalisation_is_vqas():
    from preprocessing.sources.vqa import normalise_answer, soft_scores

    assert [normalise_answer(a) for a in ("Two.", "the red one", "1,000", "black/white", "2.5", "yes!")] == \
        ["2", "red 1", "1000", "black white", "2.5", "yes"]
    assert soft_scores(["a"] * 1 + ["b"] * 2 + ["c"] * 3 + ["d"] * 4) == {"d": 1.0, "c": 0.9, "b": 0.6, "a": 0.3}


def test_vqa_confidences_and_candidates(tmp_path, vocab, negatives):
    imgs = tmp_path / "img"
    for iid in (1, 2):
        save_scene(imgs / f"COCO_train2014_{iid:012d}.jpg", iid)
    qs = {"data_subtype": "train2014", "questions": [
        {"question_id": 10, "image_id": 1, "question": "How many shapes?"},
        {"question_id": 11, "image_id": 2, "question": "What color?"},
        {"question_id": 12, "image_id": 3, "question": "Where?"}]}
    ans = {"annotations": [
        {"question_id": 10, "multiple_choice_answer": "2",
         "answers": [{"answer": a} for a in ["2"] * 7 + ["3"] * 2 + ["Two."]]},
        {"question_id": 11, "multiple_choice_answer": "red", "answers": [{"answer": "red"}] * 10},
        {"question_id": 12, "multiple_choice_answer": "left", "answers": [{"answer": "left"}] * 10}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(ans))
    out = tmp_path / "out"
    assert run_prepare("vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json",
                       "--images", imgs, "--out", out, "--workers", 0, "--min-answer-count", 1) == 0
    got = rows(out, "vqa")
    assert [r[:4] for r in got] == [["10", "1", "How many shapes?", "1.0|!+2"], ["11", "2", "What color?", "1.0|!+red"]]
    assert summary(out, "vqa")["skipped"] == {"missing file": 1}
    with open(out / "ans2label.pkl", "rb") as f:
        assert pickle.load(f) == {"2": 0, "left": 1, "red": 2}
    # all answers kept: OFA's soft scores 0.3 / 0.6 / 0.9 / 1.0 ("Two." is normalised to "2", as VQA's eval does)
    assert run_prepare("vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json",
                       "--images", imgs, "--out", out, "--name", "all", "--workers", 0, "--keep-all-answers") == 0
    assert rows(out, "all")[0][3] == "1.0|!+2&&0.6|!+3"
    # a given candidate set without the answer: the question is skipped and counted
    (tmp_path / "cands.json").write_text(json.dumps({"red": 0}))
    assert run_prepare("vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json",
                       "--images", imgs, "--out", out, "--name", "given", "--workers", 0,
                       "--ans2label", tmp_path / "cands.json") == 0
    assert summary(out, "given")["skipped"] == {"no answer in candidate set": 2}  # checked before the image
    assert not check_row(get_format("vqa"), got[0])[0]
    # the same questions as pretraining qa rows, through the vision-language stream
    assert run_prepare("vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json",
                       "--images", imgs, "--out", out, "--name", "vl", "--workers", 0, "--keep-all-answers",
                       "--to", "vision-language") == 0
    assert rows(out, "vl")[0][2:] == ["", "How many shapes?", "1.0|!+2&&0.6|!+3", "", "vqa", "qa"]
    main, _ = vl_stream(out, "vl", vocab, negatives).samples(0, np.random.default_rng(0))
    assert vocab.decode(main.target[:-1]).strip() == "2" and main.conf == 1.0


# ----------------------------------------------------------------------------------- RefCOCO

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refcoco_refs_pickle(tmp_path, vocab, negatives):
    scene = save_scene(tmp_path / "img" / "COCO_train2014_000000000007.jpg", 7)
    x0, y0, x1, y1 = scene.shapes[0].box
    refs = [{"ref_id": 1, "ann_id": 100, "image_id": 7, "split": "train", "category_id": 1,
             "sentences": [{"sent_id": 1, "sent": "the left shape"}, {"sent_id": 2, "sent": "a shape"}]},
            {"ref_id": 2, "ann_id": 101, "image_id": 7, "split": "train", "category_id": 1,
             "sentences": [{"sent_id": 3, "sent": "far away"}]}]
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    inst = {"images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 100, "bbox": [x0, y0, x1 - x0, y1 - y0]}, {"id": 101, "bbox": [50, 10, 30, 10]}]}
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    out = tmp_path / "out"
    assert run_prepare("refcoco", "--refs", tmp_path / "refs(unc).p", "--instances", tmp_path / "instances.json",
                       "--images", tmp_path / "img", "--out", out, "--workers", 0) == 0
    got = rows(out, "refcoco-train")
    assert [r[:4] for r in got] == [["1_1", "7", "the left shape", f"{x0},{y0},{x1},{y1}"],
                                    ["1_2", "7", "a shape", f"{x0},{y0},{x1},{y1}"]]
    assert summary(out, "refcoco-train")["skipped"] == {"box outside image": 1}
    assert not check_row(get_format("refcoco"), got[0])[0]
    assert run_prepare("refcoco", "--refs", tmp_path / "refs(unc).p", "--instances", tmp_path / "instances.json",
                       "--images", tmp_path / "img", "--out", out, "--workers", 0, "--to", "vision-language",
                       "--name", "vl") == 0
    assert inspect(shard_files(out, "vl")[0], "vision-language", out=io.StringIO()) == 0  # the box fits its image
    grounding, described = vl_stream(out, "vl", vocab, negatives).samples(0, np.random.default_rng(0))
    assert len(grounding.target) == 5 and grounding.target[:4].min() >= vocab.bin_offset
    assert vocab.decode(described.target[:-1]).strip() == "the left shape"

    with open(tmp_path / "evil.p", "wb") as f:
        pickle.dump([_Evil()], f)
    assert run_prepare("refcoco", "--refs", tmp_path / "evil.p", "--instances", tmp_path / "instances.json",
                       "--images", tmp_path / "img", "--out", out, "--name", "evil", "--workers", 0) == 2


# ------------------------------------------------------ detection / image-text -> the streams

def test_detection_and_image_text_read_back_through_the_streams(tmp_path, vocab, negatives):
    imgs = tmp_path / "img"
    s1 = save_scene(imgs / "1.jpg", 11)
    save_scene(imgs / "2.jpg", 12)
    box = list(s1.shapes[0].box)
    inst = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"},
                       {"id": 3, "file_name": "3.jpg"}],
            "categories": [{"id": 4, "name": "red, round thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]},
                            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [0, 0, 64.5, 48], "iscrowd": 1},
                            {"id": 3, "image_id": 2, "category_id": 4, "bbox": [10, 10, 100, 10]}]}
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    out = tmp_path / "out"
    assert run_prepare("detection", "--annotations", tmp_path / "instances.json", "--images", imgs, "--out", out,
                       "--workers", 0) == 0
    assert summary(out, "detection")["skipped"] == {"box outside image": 1, "no objects": 1, "crowd object left out": 1}
    stream = S.DetectionStream(TSVFile(shard_files(out, "detection")[0], "0,1,2"), vocab, image_size=64)
    sample = stream.sample(0, np.random.default_rng(0))
    assert sample.target[:4].min() >= vocab.bin_offset          # four bins ...
    assert vocab.decode(sample.target[4:-1]).strip() == "red, round thing"  # ... and the name

    # image folder + CSV captions -> vision-language rows -> VisionLanguageStream samples
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption"])
        w.writerows([["1.jpg", "a red circle"], ["2.jpg", ""], ["nope.jpg", "x"]])
    assert run_prepare("image-text", "--captions", tmp_path / "caps.csv", "--images", imgs, "--out", out,
                       "--workers", 0, "--dataset-name", "mine") == 0
    assert summary(out, "image-text")["skipped"] == {"empty caption": 1, "missing file": 1}
    main, itm = vl_stream(out, "image-text", vocab, negatives).samples(0, np.random.default_rng(0))
    assert vocab.decode(main.target[:-1]).strip() == "a red circle" and main.patch_image.shape == (3, 32, 32)


def test_webdataset_in_and_out(tmp_path, vocab):
    tar_path = tmp_path / "shard-000.tar"
    save_scene(tmp_path / "k.png", 5, fmt="PNG")
    png = (tmp_path / "k.png").read_bytes()
    with tarfile.open(tar_path, "w") as tar:
        for key, members in [("s/000", {"png": png, "txt": b"two shapes"}),
                             ("s/001", {"jpg": png, "json": json.dumps({"caption": "from json"}).encode()}),
                             ("s/002", {"txt": b"no image"})]:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert run_prepare("webdataset", tar_path, "--out", out, "--workers", 0) == 0
    got = rows(out, "webdataset")
    assert [(r[0], r[2], r[7]) for r in got] == [("000", "two shapes", "caption"), ("001", "from json", "caption")]
    assert raw_image(got[0][1]) == png
    assert summary(out, "webdataset")["skipped"] == {"missing file": 1}

    assert run_prepare("to-webdataset", shard_files(out, "webdataset")[0], "--format", "vision-language",
                       "--out", out, "--workers", 0) == 0
    with tarfile.open(out / "to-webdataset-00000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.png", "000000000.json", "000000000.txt"]
        assert tar.extractfile("000000000.png").read() == png
        assert tar.extractfile("000000001.txt").read() == b"from json"
    # ... and back in again: the same rows
    assert run_prepare("webdataset", out / "to-webdataset-00000.tar", "--out", out, "--name", "again", "--workers", 0) == 0
    assert [r[1:3] for r in rows(out, "again")] == [r[1:3] for r in got]


# --------------------------------------------------------------- SNLI-VE, GLUE, ImageNet

def test_snli_ve_glue_imagenet(tmp_path, shared):
    save_scene(tmp_path / "flickr" / "123.jpg", 9)
    lines = [{"Flickr30K_ID": "123", "sentence1": "two shapes", "sentence2": "there are shapes",
              "gold_label": "entailment", "pairID": "p1"},
             {"Flickr30K_ID": "123", "sentence1": "x", "sentence2": "y", "gold_label": "-", "pairID": "p2"}]
    (tmp_path / "ve.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    out = tmp_path / "out"
    assert run_prepare("snli-ve", "--jsonl", tmp_path / "ve.jsonl", "--images", tmp_path / "flickr", "--out", out,
                       "--workers", 0) == 0
    (ve,) = rows(out, "snli-ve")
    assert [ve[0], ve[1], ve[3], ve[4], ve[5]] == ["p1", "123", "there are shapes", "two shapes", "entailment"]
    assert summary(out, "snli-ve")["skipped"] == {"bad label": 1}

    glue = {"mnli": "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
                    "0\t1\t2\tg\t-\t-\t-\t-\tA man sleeps.\tA person rests.\tentailment\tentailment\n"
                    "1\t1\t2\tg\t-\t-\t-\t-\tA man sleeps.\tNobody.\tcontradiction\tcontradiction\n",
            "cola": "gj04\t1\t\tThe cat sat.\ngj04\t2\t*\tCat the sat.\n",
            "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\tHow come?\t1\n"}
    expected = {"mnli": [["A man sleeps.", "A person rests.", "1"], ["A man sleeps.", "Nobody.", "2"]],
                "cola": [["gj04", "The cat sat.", "1"]],
                "qqp": [["0", "1", "2", "Why?", "How come?", "1"]]}
    for task, text in glue.items():
        (tmp_path / f"{task}.tsv").write_text(text)
        assert run_prepare("glue", "--task", task, "--tsv", tmp_path / f"{task}.tsv", "--out", out, "--workers", 0) == 0
        assert rows(out, f"glue-{task}") == expected[task]
        # the same column layout as OFA's own files in the fixture
        fixture = shared / "fixtures" / "ofa_finetune_golden" / "data" / "glue" / f"{task}_train.tsv"
        assert len(fixture.read_text().splitlines()[0].split("\t")) == len(expected[task][0])
    assert summary(out, "glue-cola")["skipped"] == {"bad label": 1}

    for cls, n in (("n02", 1), ("n01", 2)):
        for i in range(n):
            save_scene(tmp_path / "inet" / cls / f"{i}.JPEG", 20 + i, fmt="JPEG")
    (tmp_path / "names.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    assert run_prepare("imagenet", "--root", tmp_path / "inet", "--class-names", tmp_path / "names.txt",
                       "--out", out, "--workers", 0) == 0
    assert [r[1:] for r in rows(out, "imagenet")] == [["1", "tench"], ["1", "tench"], ["2", "goldfish"]]
    assert json.loads((out / "class2label_new.json").read_text()) == {"tench": 0, "goldfish": 1}


def test_text_corpus_and_gigaword_read_back(tmp_path, vocab):
    (tmp_path / "corpus.txt").write_text("The first document, about shapes.\n\nA second one.\n")
    (tmp_path / "a.txt").write_text("the ## people said\nsecond article\n")
    (tmp_path / "t.txt").write_text("## said\n")
    out = tmp_path / "out"
    assert run_prepare("text", tmp_path / "corpus.txt", "--out", out, "--workers", 0) == 0
    assert rows(out, "text") == [["corpus-0", "The first document, about shapes."], ["corpus-2", "A second one."]]
    assert summary(out, "text")["skipped"] == {"empty text": 1}
    stream = S.TextInfillingStream(TSVFile(shard_files(out, "text")[0], "0,1"), vocab, image_size=32)
    (sample,) = stream.samples(0, np.random.default_rng(0))
    assert vocab.decode(sample.target[:-1]).strip() == "the first document, about shapes."
    assert run_prepare("gigaword", "--source", tmp_path / "a.txt", "--target", tmp_path / "t.txt", "--out", out,
                       "--workers", 0) == 0
    assert rows(out, "gigaword") == [["the ## people said", "## said"]]
    assert summary(out, "gigaword")["skipped"] == {"unaligned files": 1}


# ------------------------------------------------------------------------- image codes

def test_image_codes_infilling_and_text_to_image(tmp_path, vocab, one_torch_thread):
    from ofa_ds.vqgan import VQGAN
    from preprocessing.sources.image_codes import square, to_tensor

    save_scene(tmp_path / "img" / "a.jpg", 31, size=(300, 200))
    save_scene(tmp_path / "img" / "b.png", 32, size=(200, 260), fmt="PNG")
    out = tmp_path / "out"
    assert run_prepare("image-codes", "--images", tmp_path / "img", "--out", out, "--random-init",
                       "--flavor", "tiny", "--batch-size", 2) == 0
    got = rows(out, "image-codes-infilling")
    assert [r[0] for r in got] == ["a", "b"]
    torch.manual_seed(0)
    vq = VQGAN.from_flavor("tiny")
    centre = to_tensor(square(Image.open(tmp_path / "img" / "a.jpg")))[None, :, 64:192, 64:192]
    assert got[0][2] == " ".join(map(str, vq.encode(centre).flatten().tolist()))
    stream = S.ImageInfillingStream(TSVFile(shard_files(out, "image-codes-infilling")[0], "0,1,2"), vocab)
    sample = stream.sample(1, np.random.default_rng(0))
    assert sample.patch_image.shape == (3, 256, 256) and len(sample.target) == 257 and sample.code_mask

    (tmp_path / "caps.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "A Red Circle"}) + "\n")
    assert run_prepare("image-codes", "--task", "text-to-image", "--images", tmp_path / "img", "--captions",
                       tmp_path / "caps.jsonl", "--out", out, "--random-init", "--flavor", "tiny") == 0
    (gen,) = rows(out, "image-codes-text-to-image")
    assert gen[0] == "a" and len(gen[1].split()) == 1024 and gen[2] == "a red circle"
    assert not check_row(get_format("image-gen"), gen)[0]
    # from an ofa-ds TSV that already holds the images (here: caption rows)
    with open(tmp_path / "cap.tsv", "w") as f:
        f.write("\t".join(["c1", "9", "Two Shapes", "", base64.b64encode((tmp_path / "img" / "a.jpg").read_bytes()).decode()]) + "\n")
    assert run_prepare("image-codes", "--task", "text-to-image", "--from-tsv", tmp_path / "cap.tsv", "--format",
                       "caption", "--out", out, "--name", "from-tsv", "--random-init", "--flavor", "tiny") == 0
    assert rows(out, "from-tsv") == [["c1", gen[1], "two shapes"]]  # same image, same codes


# ---------------------------------------------------------------- resume, processes

def _folder_dataset(root: Path, n: int) -> tuple[Path, Path]:
    for i in range(n):
        save_scene(root / "img" / f"{i}.jpg", 100 + i)
    (root / "img" / "7.jpg").write_bytes(b"garbage")
    (root / "caps.jsonl").write_text("".join(json.dumps({"image": f"{i}.jpg", "caption": f"image {i}"}) + "\n"
                                             for i in range(n)))
    return root / "caps.jsonl", root / "img"


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix == ".tsv" or p.name.endswith(".done.json")}


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, capsys):
    caps, imgs = _folder_dataset(tmp_path, 10)
    args = ["image-text", "--captions", caps, "--images", imgs, "--shard-records", 3]
    # Reference: an uninterrupted run on two worker processes.
    assert run_prepare(*args, "--out", tmp_path / "ref", "--workers", 2) == 0
    ref = _outputs(tmp_path / "ref")
    assert len([n for n in ref if n.endswith(".tsv")]) == 4
    assert summary(tmp_path / "ref", "image-text")["skipped"] == {"corrupt image": 1}

    # Killed (SIGKILL) in the middle of the second shard, then resumed.
    env = {**os.environ, "OFA_DS_PREPARE_KILL_AFTER_ROWS": "5", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "preprocessing.prepare", *map(str, args), "--out", str(tmp_path / "res"),
           "--workers", "0", "--no-progress"]
    killed = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    partial = _outputs(tmp_path / "res")
    assert set(partial) == {"image-text-00000.tsv", "image-text-00000.done.json"}
    assert any(p.name.endswith(".tmp") for p in (tmp_path / "res").iterdir())  # the half-written shard
    assert run_prepare(*args, "--out", tmp_path / "res", "--workers", 0) == 0
    assert _outputs(tmp_path / "res") == ref
    ref_summary, res_summary = summary(tmp_path / "ref", "image-text"), summary(tmp_path / "res", "image-text")
    for key in ("records", "rows", "skipped", "examples", "shards"):
        assert res_summary[key] == ref_summary[key], key
    assert summary(tmp_path / "res", "image-text")["resumed_shards"] == 1
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "res").iterdir())
    # a resume with other settings is refused instead of mixing two conversions
    assert run_prepare(*args[:-1], 4, "--out", tmp_path / "res", "--workers", 0) == 2
    # --strict across worker processes: the bad record still stops the run, named
    assert run_prepare(*args, "--out", tmp_path / "strict", "--workers", 2, "--strict") == 1
    assert "7.jpg, field 'image': corrupt image" in capsys.readouterr().err


# ------------------------------------------------------------------------------- inspect

@pytest.mark.parametrize("file,fmt", [
    ("caption_stage1_train.tsv", "caption"), ("caption_val.tsv", "caption"), ("vqa_train.tsv", "vqa"),
    ("refcoco_train.tsv", "refcoco"), ("snli_ve_train.tsv", "snli-ve"), ("imagenet_train.tsv", "imagenet"),
    ("image_gen_train.tsv", "image-gen"), ("gigaword_train.tsv", "gigaword"), ("glue/mnli_train.tsv", "glue-mnli"),
    ("glue/rte_train.tsv", "glue-rte"), ("glue/sst2_train.tsv", "glue-sst2"), ("glue/mrpc_train.tsv", "glue-mrpc"),
])
def test_formats_fit_ofas_own_files(shared, tmp_path, file, fmt):
    """The finetuning formats converters write are OFA's exact layouts (the fixture's TSVs)."""
    copy = tmp_path / Path(file).name  # a copy: the row index is written beside the file, not into shared/
    copy.write_bytes((shared / "fixtures" / "ofa_finetune_golden" / "data" / file).read_bytes())
    assert inspect(copy, fmt, show=0, out=io.StringIO()) == 0


def test_inspect_reports_and_draws(tmp_path):
    from preprocessing.inspect_tsv import main as inspect_main

    img = Image.new("RGB", (40, 30), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    (tmp_path / "det.tsv").write_text(f"1\t{b64}\t5,5,20,20,3,dog&&1,1,50,10,4,cat\n2\t{b64}\t0,0,\n")
    report = io.StringIO()
    assert inspect(tmp_path / "det.tsv", "detection", sheet=str(tmp_path / "sheet.png"), out=report) == 2
    text = report.getvalue()
    assert "2 rows" in text and "not inside the 40x30 image" in text and "is not x0,y0,x1,y1" in text
    assert "(40, 30)" in text and "dog" in text
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert ((sheet[..., 0] == 255) & (sheet[..., 1] == 0)).any()   # a red box was drawn
    assert inspect_main([str(tmp_path / "det.tsv"), "--format", "detection"]) == 1


# ------------------------------------------------------ through the finetuning task readers

def test_outputs_build_finetuning_samples(tmp_path, ofa_bpe_dir, monkeypatch, one_torch_thread):
    """Converter outputs are what the finetuning tasks (ofa_ds/tasks) read: samples build."""
    from ofa_ds.config.load import load_config
    from ofa_ds.tasks import build_task

    monkeypatch.setenv("OFA_DS_CACHE_DIR", str(tmp_path / "cache"))
    vocab = Vocabulary.from_dir(ofa_bpe_dir)
    out = tmp_path / "data"
    imgs = tmp_path / "img"
    save_scene(imgs / "COCO_val2014_000000000001.jpg", 1)
    save_scene(imgs / "77.jpg", 2)
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"question_id": 5, "image_id": 1, "question": "What color is it"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 5, "multiple_choice_answer": "red", "answers": [{"answer": "red"}] * 6 + [{"answer": "blue"}] * 4}]}))
    assert run_prepare("vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json", "--images",
                       imgs, "--out", out, "--workers", 0, "--min-answer-count", 1, "--keep-all-answers") == 0
    (tmp_path / "ve.jsonl").write_text(json.dumps({"Flickr30K_ID": "77", "sentence1": "two shapes.",
                                                   "sentence2": "there are shapes.", "gold_label": "neutral"}) + "\n")
    assert run_prepare("snli-ve", "--jsonl", tmp_path / "ve.jsonl", "--images", imgs, "--out", out, "--workers", 0) == 0
    (tmp_path / "rte.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat sleeps.\tA cat rests.\tentailment\n")
    assert run_prepare("glue", "--task", "rte", "--tsv", tmp_path / "rte.tsv", "--out", out, "--workers", 0) == 0

    def task(name, train, **options):
        overrides = {"task.name": name, "data.root": str(out), "data.vocab_dir": str(ofa_bpe_dir),
                     "model.flavor": "tiny", "train.out_dir": str(tmp_path / "run"), "data.patch_image_size": 64,
                     "task.train": train, "task.valid": train, **options}
        return build_task(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), vocab)

    ann, coco = karpathy_layout(tmp_path / "coco")
    assert run_prepare("coco-captions", "--annotations", ann, "--images", coco, "--out", out, "--workers", 0) == 0
    s = task("caption", "coco-captions-train-00000.tsv").build_sample("train", 0)
    assert vocab.decode(s.target[:-1]).strip() == "A red circle"  # the task strips punctuation

    vqa = task("vqa_gen", "vqa-00000.tsv", **{"task.options.ans2label": "ans2label.pkl"})
    s = vqa.build_sample("train", 0)
    assert s.ref == {"red": 1.0, "blue": 1.0} and s.patch_image.shape == (3, 64, 64)
    assert vocab.decode(s.target[s.target != vocab.pad][:-1]).strip() == "red"
    s = task("snli_ve", "snli-ve-00000.tsv").build_sample("train", 0)
    assert s.ref == {"maybe": 1.0}
    s = task("rte", "glue-rte-00000.tsv").build_sample("train", 0)
    assert s.ref == {"yes": 1.0}

    scene = save_scene(imgs / "COCO_train2014_000000000007.jpg", 7)
    box = scene.shapes[0].box
    with open(tmp_path / "refs.p", "wb") as f:
        pickle.dump([{"ref_id": 1, "ann_id": 9, "image_id": 7, "split": "train",
                      "sentences": [{"sent_id": 1, "sent": "the shape"}]}], f)
    (tmp_path / "inst.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg"}],
        "annotations": [{"id": 9, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}]}))
    assert run_prepare("refcoco", "--refs", tmp_path / "refs.p", "--instances", tmp_path / "inst.json", "--images",
                       imgs, "--out", out, "--workers", 0) == 0
    s = task("refcoco", "refcoco-train-00000.tsv").build_sample("train", 0)
    assert len(s.target) == 5 and s.target[:4].min() >= vocab.bin_offset
    (tmp_path / "a.txt").write_text("the ## people said on monday\n")
    (tmp_path / "t.txt").write_text("people said\n")
    assert run_prepare("gigaword", "--source", tmp_path / "a.txt", "--target", tmp_path / "t.txt", "--out", out,
                       "--workers", 0) == 0
    s = task("gigaword", "gigaword-00000.tsv").build_sample("train", 0)
    assert vocab.decode(s.target[:-1]).strip() == "people said"
    for cls in ("n01", "n02"):
        save_scene(tmp_path / "inet" / cls / "a.JPEG", 3)
    (tmp_path / "names.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    assert run_prepare("imagenet", "--root", tmp_path / "inet", "--class-names", tmp_path / "names.txt",
                       "--out", out, "--workers", 0) == 0
    s = task("image_classify", "imagenet-00000.tsv", **{"task.options.class2label": "class2label_new.pkl"}) \
        .build_sample("valid", 1)
    assert vocab.decode(s.target[:-1]).strip() == "goldfish"
    (tmp_path / "gen.jsonl").write_text(json.dumps({"image": "77.jpg", "caption": "Two Shapes"}) + "\n")
    assert run_prepare("image-codes", "--task", "text-to-image", "--images", imgs, "--captions", tmp_path / "gen.jsonl",
                       "--out", out, "--random-init", "--flavor", "tiny") == 0
    s = task("image_gen", "image-codes-text-to-image-00000.tsv", **{"data.code_image_size": 256}).build_sample("train", 0)
    assert len(s.target) == 1025 and s.code_mask and s.target[:-1].min() >= vocab.code_offset


def test_records_stream_one_shard_at_a_time(tmp_path):
    """Memory stays flat: the engine pulls the next shard's records only when it starts it."""
    from preprocessing.engine import Converter, run

    pulled = []

    class Counting(Converter):
        kind, format = "count", "text"

        def records(self):
            for i in range(10):
                pulled.append(i)
                yield i

        def rows(self, i):
            assert len(pulled) <= (i // 4 + 1) * 4, f"record {i}: {len(pulled)} records already read"
            yield [str(i), f"text {i}"]

    s = run(Counting(), tmp_path, name="c", shard_records=4, workers=0, progress=False)
    assert (s.records, s.rows, s.shards) == (10, 10, ["c-00000.tsv", "c-00001.tsv", "c-00002.tsv"])


def test_sample_data_fits_the_formats(sample_data):
    """make-sample-data and the converters agree on every layout."""
    files = {"pretrain/vision_language_examples.tsv": "vision-language", "pretrain/text_examples.tsv": "text",
             "pretrain/image_examples.tsv": "image-infilling", "pretrain/detection_examples.tsv": "detection",
             "finetune/caption/train.tsv": "caption", "finetune/vqa/train.tsv": "vqa",
             "finetune/refcoco/train.tsv": "refcoco", "finetune/snli_ve/train.tsv": "snli-ve",
             "finetune/imagenet/train.tsv": "imagenet", "finetune/image_gen/train.tsv": "image-gen",
             "finetune/gigaword/train.tsv": "gigaword",
             **{f"finetune/glue/{t}/train.tsv": f"glue-{t}" for t in ("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli")}}
    for rel, fmt in files.items():
        report = io.StringIO()
        assert inspect(sample_data / rel, fmt, show=0, check=8, out=report) == 0, report.getvalue()
