"""``ofa-ds make-sample-data DIR``: a small offline dataset in OFA's formats, in seconds.

Everything is drawn procedurally (``scenes.py``: coloured shapes at positions), and all text --
captions, questions and answers, referring expressions, boxes, detection labels, entailment
labels -- is derived from what is drawn, so it is *true to the image* and a model can
measurably learn it. Layout::

    DIR/pretrain/vision_language_examples.tsv   uniq_id, image, caption, question, refs, gt_objects, dataset_name, type
    DIR/pretrain/text_examples.tsv              uniq_id, text
    DIR/pretrain/image_examples.tsv             image_id, image (2C x 2C), code ((C/8)^2 stand-in codes)
    DIR/pretrain/detection_examples.tsv         image_id, image, label (x0,y0,x1,y1,cat_id,name&&...)
    DIR/pretrain/negative_sample/               all_captions.txt, object.txt, type2ans.json
    DIR/finetune/<task>/{train,valid,test}.tsv  caption, vqa, refcoco, snli_ve, glue/<cola|sst2|mrpc|qqp|mnli|rte|qnli>,
                                                imagenet, gigaword, image_gen (raw column layouts of spec §5)
    DIR/vocab/                                  encoder.json, vocab.bpe, dict.txt: a small BPE trained on these texts
    DIR/manifest.json                           counts, seed, notes

Images are base64 PNG (lossless, so tests can check pixel colours inside boxes). The image
codes are **not** VQ-GAN codes: ``scenes.block_codes`` quantises each 8×8 block's mean colour
to one of 8192 ids, a stand-in that gives the code targets the right shape and a learnable
relation to the pixels. The vocabulary is trained here because OFA's GPT-2 files are not on a
fresh machine; real runs should use OFA's ``utils/BPE`` files.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import pickle
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from ofa_ds.data.build_vocab import token_counts, train_bpe, write_vocab_dir
from ofa_ds.data.streams.common import (
    PROMPT_CAPTION, PROMPT_DETECTION, PROMPT_GROUNDED_CAPTION, PROMPT_GROUNDING, PROMPT_IMAGE_INFILLING,
    PROMPT_ITM_CAPTION, PROMPT_ITM_QA, PROMPT_TEXT_INFILLING,
)
from preprocessing.scenes import COLORS, OBJECT_WORDS, SHAPES, Scene, block_codes, random_scene

VL_SIZES = ((320, 240), (256, 256), (240, 320), (288, 224))
SPLITS = ("train", "valid", "test")


def b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_tsv(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            fields = [str(v) for v in row]
            assert not any("\t" in v or "\n" in v for v in fields), row  # our own generator's invariant
            f.write("\t".join(fields) + "\n")
            n += 1
    return n


def box_str(box) -> str:
    return ",".join(str(v) for v in box)


class _Writer:
    """Generates every file; collects all text for the vocabulary corpus."""

    def __init__(self, root: Path, seed: int, code_image_size: int):
        self.root, self.rng, self.code_image_size = root, random.Random(seed), code_image_size
        self.corpus: list[str] = []
        self.counts: dict[str, int] = {}

    def text(self, *texts: str) -> None:
        self.corpus.extend(t for t in texts if t)

    def scene(self, size=None, **kw) -> Scene:
        w, h = size or self.rng.choice(VL_SIZES)
        return random_scene(self.rng, w, h, **kw)

    def save(self, rel: str, rows) -> None:
        self.counts[rel] = write_tsv(self.root / rel, rows)

    # -- pretraining -------------------------------------------------------------------------
    def vision_language(self, n: int):
        all_captions = []
        for i in range(n):
            scene = self.scene()
            image = b64_png(scene.render())
            kind = ("caption", "caption", "qa", "qa", "visual_grounding")[i % 5]
            if kind == "caption":
                caption = scene.caption(self.rng)
                all_captions.append(caption)
                objects = "&&".join(dict.fromkeys(s.shape for s in scene.shapes))
                self.text(caption)
                yield [f"vl{i}", image, caption, "", "", objects, "sample", "caption"]
            elif kind == "qa":
                question, answer, _ = self.rng.choice(scene.questions(self.rng))
                self.text(question, answer)
                yield [f"vl{i}", image, "", question, f"1.0|!+{answer}", "", "sample", "qa"]
            else:
                shape = self.rng.choice(scene.shapes)
                expression = scene.referring(shape)
                self.text(expression)
                yield [f"vl{i}", image, expression, "", box_str(shape.box), "", "sample", "visual_grounding"]
        self.all_captions = all_captions

    def text_rows(self, n: int):
        for i in range(n):
            sentences = []
            for _ in range(self.rng.randint(1, 4)):
                scene = self.scene()
                sentences.append(scene.caption(self.rng))
                q, a, _ = self.rng.choice(scene.questions(self.rng))
                sentences.append(f"{q[:-1]}? {a}.")
            text = " ".join(sentences)
            self.text(text)
            yield [f"text{i}", text]

    def image_rows(self, n: int):
        c = self.code_image_size
        for i in range(n):
            img = self.scene((2 * c, 2 * c), max_shapes=4).render()
            codes = block_codes(img.crop((c // 2, c // 2, c // 2 + c, c // 2 + c)))
            yield [f"img{i}", b64_png(img), " ".join(map(str, codes.tolist()))]

    def detection_rows(self, n: int):
        categories = {f"{c} {s}": k for k, (c, s) in enumerate((c, s) for c in COLORS for s in SHAPES)}
        for i in range(n):
            scene = self.scene(max_shapes=4)
            label = "&&".join(f"{box_str(s.box)},{categories[s.name]},{s.name}" for s in scene.shapes)
            self.text(*(s.name for s in scene.shapes))
            yield [f"det{i}", b64_png(scene.render()), label]

    def negatives(self) -> None:
        neg = self.root / "pretrain" / "negative_sample"
        neg.mkdir(parents=True, exist_ok=True)
        (neg / "all_captions.txt").write_text("\n".join(dict.fromkeys(self.all_captions)) + "\n", encoding="utf-8")
        (neg / "object.txt").write_text("\n".join(OBJECT_WORDS) + "\n", encoding="utf-8")
        type2ans = {"how many": [str(k) for k in range(6)], "color": list(COLORS), "shape": list(SHAPES),
                    "yes/no": ["yes", "no"],
                    "other": ["left", "right", "top", "bottom", "middle", "top left", "top right",
                              "bottom left", "bottom right", *COLORS, *SHAPES]}
        (neg / "type2ans.json").write_text(json.dumps(type2ans, indent=1), encoding="utf-8")
        self.text(*OBJECT_WORDS, *(a for answers in type2ans.values() for a in answers))

    # -- finetuning ----------------------------------------------------------------------------
    def split_sizes(self, n: int) -> dict[str, int]:
        return {"train": n, "valid": max(4, n // 4), "test": max(4, n // 4)}

    def finetune(self, n: int) -> None:
        sizes = self.split_sizes(n)
        answers: dict[str, int] = {}
        for split, m in sizes.items():
            self.save(f"finetune/caption/{split}.tsv", self._caption(split, m))
            self.save(f"finetune/vqa/{split}.tsv", self._vqa(split, m, answers))
            self.save(f"finetune/refcoco/{split}.tsv", self._refcoco(split, m))
            self.save(f"finetune/snli_ve/{split}.tsv", self._snli_ve(split, m))
            self.save(f"finetune/imagenet/{split}.tsv", self._imagenet(m))
            self.save(f"finetune/gigaword/{split}.tsv", self._gigaword(m))
            self.save(f"finetune/image_gen/{split}.tsv", self._image_gen(split, m))
            for task, rows in self._glue(m).items():
                self.save(f"finetune/glue/{task}/{split}.tsv", rows)
        with open(self.root / "finetune" / "vqa" / "trainval_ans2label.pkl", "wb") as f:
            pickle.dump(answers, f)
        classes = {f"{c} {s}": k for k, (c, s) in enumerate((c, s) for c in COLORS for s in SHAPES)}
        with open(self.root / "finetune" / "imagenet" / "class2label_new.pkl", "wb") as f:
            pickle.dump(classes, f)

    def _caption(self, split: str, m: int):
        # Raw columns: uniq-id, image-id, caption, objects (unused), image. Evaluation splits
        # hold every reference caption of an image joined by "&&".
        for i in range(m):
            scene = self.scene()
            refs = [scene.caption(self.rng) for _ in range(1 if split == "train" else 3)]
            self.text(*refs)
            yield [f"cap-{split}-{i}", f"img-cap-{split}-{i}", "&&".join(refs), "", b64_png(scene.render())]

    def _vqa(self, split: str, m: int, answers: dict[str, int]):
        # question-id, image-id, question, answers (conf|!+answer&&...), objects, image
        for i in range(m):
            scene = self.scene()
            question, answer, _ = self.rng.choice(scene.questions(self.rng))
            answers.setdefault(answer, len(answers))
            objects = "&&".join(s.name for s in scene.shapes)
            self.text(question, answer)
            yield [f"{split}{i}", f"img-vqa-{split}-{i}", question, f"1.0|!+{answer}", objects,
                   b64_png(scene.render())]

    def _refcoco(self, split: str, m: int):
        # uniq-id, image-id, text, region-coord "x0,y0,x1,y1", image
        for i in range(m):
            scene = self.scene()
            shape = self.rng.choice(scene.shapes)
            self.text(scene.referring(shape))
            yield [f"ref-{split}-{i}", f"img-ref-{split}-{i}", scene.referring(shape), box_str(shape.box),
                   b64_png(scene.render())]

    def _snli_ve(self, split: str, m: int):
        # uniq-id, image-id, image, hypothesis, caption (premise), label
        for i in range(m):
            scene = self.scene()
            present = {s.name for s in scene.shapes}
            label = self.rng.choice(("entailment", "contradiction", "neutral"))
            if label == "entailment":
                hypothesis = f"there is {self.rng.choice(scene.shapes).with_article}."
            elif label == "contradiction":
                absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
                hypothesis = f"there is a {self.rng.choice(absent)}."
            else:
                hypothesis = self.rng.choice(("the shapes were drawn by a child.", "the picture is a logo.",
                                              "someone likes these shapes."))
            premise = scene.caption(self.rng)
            self.text(hypothesis, premise)
            yield [f"ve-{split}-{i}", f"img-ve-{split}-{i}", b64_png(scene.render()), hypothesis, premise, label]

    def _imagenet(self, m: int):
        # image, label index (1-based), class name: one large shape per image.
        classes = [f"{c} {s}" for c in COLORS for s in SHAPES]
        for _ in range(m):
            k = self.rng.randrange(len(classes))
            color, shape = classes[k].split()
            scene = self.scene((256, 256), max_shapes=1, min_size=80, max_size=160)
            scene.shapes[0].color, scene.shapes[0].shape = color, shape
            self.text(classes[k])
            yield [b64_png(scene.render()), k + 1, classes[k]]

    def _gigaword(self, m: int):
        # source, target (digits masked as "#", as in the Gigaword release)
        for _ in range(m):
            scene = self.scene()
            size = "#" * len(str(scene.width))
            details = " ".join(f"{s.with_article} is drawn {scene.position(s)} , about ## pixels wide ."
                               for s in scene.shapes)
            source = f"a new picture , ### pixels by {size} pixels , was released on monday . {details}"
            target = scene.caption(self.rng).rstrip(".")
            self.text(source, target)
            yield [source, target]

    def _image_gen(self, split: str, m: int):
        # uniq-id, image-code (1024 stand-in codes of a 256x256 image), lowercased caption
        for i in range(m):
            scene = self.scene((256, 256))
            caption = scene.caption(self.rng).lower()
            self.text(caption)
            yield [f"gen-{split}-{i}", " ".join(map(str, block_codes(scene.render()).tolist())), caption]

    def _glue(self, m: int) -> dict[str, list[list]]:
        """Text-only pairs in each GLUE task's raw column layout (spec §5.7 selected_cols)."""
        rows: dict[str, list[list]] = {t: [] for t in ("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli")}
        for i in range(m):
            scene = self.scene()
            s = self.rng.choice(scene.shapes)
            fact = f"{s.with_article} is {scene.position(s)}."
            other = f"the {s.name} can be seen {scene.position(s)}."
            wrong = f"{s.with_article} is {self.rng.choice(['at the top', 'at the bottom', 'on the left', 'on the right'])}."
            words = fact.rstrip(".").split()
            good = self.rng.random() < 0.5
            rows["cola"].append([f"src{i}", fact if good else " ".join(self.rng.sample(words, len(words))), int(good)])
            positive = self.rng.random() < 0.5
            review = f"i really love this bright {s.name}." if positive else f"what a dull and ugly {s.name}."
            rows["sst2"].append([review, int(positive)])
            same = self.rng.random() < 0.5
            rows["mrpc"].append([fact, other if same else wrong, int(same)])
            q1, q2 = f"where is the {s.name}?", f"in which part of the picture is the {s.name}?"
            rows["qqp"].append([i, 2 * i, 2 * i + 1, q1, q2 if same else f"what color is the {s.shape}?", int(same)])
            # MNLI labels: 0 neutral -> maybe, 1 entailment -> yes, 2 contradiction -> no.
            nli = self.rng.randrange(3)
            hypothesis = ("the shape was drawn by hand.", f"there is a {s.shape}.", f"there is no {s.shape}.")[nli]
            rows["mnli"].append([fact, hypothesis, nli])
            rows["rte"].append([i, fact, f"there is a {s.shape}." if same else f"there is no {s.shape}.",
                                "entailment" if same else "not_entailment"])
            rows["qnli"].append([i, q1, fact if same else f"the sky is {s.color}.",
                                 "entailment" if same else "not_entailment"])
            self.text(fact, other, wrong, review, q1, q2, hypothesis)
        return rows

    # -- vocabulary --------------------------------------------------------------------------
    def vocab(self, vocab_size: int) -> int:
        prompts = [PROMPT_CAPTION, PROMPT_GROUNDED_CAPTION, PROMPT_IMAGE_INFILLING, PROMPT_DETECTION,
                   PROMPT_TEXT_INFILLING, PROMPT_ITM_CAPTION.format("x"), PROMPT_ITM_QA.format("x", "y"),
                   PROMPT_GROUNDING.format("x"), " what is the summary of article \" \"?",
                   " what is the complete image? caption:", " yes no maybe positive negative"]
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text("\n".join(self.corpus + prompts * 20) + "\n", encoding="utf-8")
            tok = train_bpe(corpus, vocab_size=vocab_size, min_frequency=2)
            write_vocab_dir(self.root / "vocab", tok, token_counts(tok, corpus))
        return tok.get_vocab_size()


def write_sample_data(out_dir, *, vl_rows: int = 320, text_rows: int = 160, image_rows: int = 64,
                      detection_rows: int = 64, finetune_rows: int = 48, code_image_size: int = 128,
                      vocab_size: int = 1000, seed: int = 0) -> dict:
    """Write the whole sample dataset under ``out_dir``; returns the manifest."""
    if min(vl_rows, text_rows, image_rows, detection_rows, finetune_rows) < 1:
        raise ValueError("every row count must be >= 1")
    if code_image_size % 8:
        raise ValueError(f"code_image_size must be a multiple of 8, got {code_image_size}")
    root = Path(out_dir)
    w = _Writer(root, seed, code_image_size)
    w.save("pretrain/vision_language_examples.tsv", w.vision_language(vl_rows))
    w.save("pretrain/text_examples.tsv", w.text_rows(text_rows))
    w.save("pretrain/image_examples.tsv", w.image_rows(image_rows))
    w.save("pretrain/detection_examples.tsv", w.detection_rows(detection_rows))
    w.negatives()
    w.finetune(finetune_rows)
    bpe_size = w.vocab(vocab_size)
    manifest = {
        "seed": seed, "code_image_size": code_image_size, "bpe_size": bpe_size, "rows": w.counts,
        "notes": ["procedural shape scenes; all text and boxes are true to the drawn images",
                  "image codes are a stand-in (8x8 block mean colour -> 8192 ids), not VQ-GAN codes",
                  "vocab/ is a small BPE trained on these texts, not OFA's GPT-2 vocabulary"],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def pretrain_config(root, **overrides):
    """A :class:`PretrainDataConfig` pointing at the pretraining files under ``root``."""
    from ofa_ds.data.pretrain import PretrainDataConfig

    pre = Path(root) / "pretrain"
    paths = dict(vision_language=str(pre / "vision_language_examples.tsv"), text=str(pre / "text_examples.tsv"),
                 image=str(pre / "image_examples.tsv"), detection=str(pre / "detection_examples.tsv"),
                 negative_sample_dir=str(pre / "negative_sample"))
    return PretrainDataConfig(**{**paths, **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-ds make-sample-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="DIR")
    parser.add_argument("--vl-rows", type=int, default=320, help="vision-language rows (default 320)")
    parser.add_argument("--text-rows", type=int, default=160)
    parser.add_argument("--image-rows", type=int, default=64)
    parser.add_argument("--detection-rows", type=int, default=64)
    parser.add_argument("--finetune-rows", type=int, default=48, help="train rows per finetuning task; "
                        "valid/test get a quarter (at least 4)")
    parser.add_argument("--code-image-size", type=int, default=128,
                        help="centre size C of image infilling: images are 2C x 2C with (C/8)^2 codes")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = write_sample_data(args.out_dir, vl_rows=args.vl_rows, text_rows=args.text_rows,
                                     image_rows=args.image_rows, detection_rows=args.detection_rows,
                                     finetune_rows=args.finetune_rows, code_image_size=args.code_image_size,
                                     vocab_size=args.vocab_size, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    pretrain = {k: v for k, v in manifest["rows"].items() if k.startswith("pretrain/")}
    print(f"wrote sample data to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    for rel, n in pretrain.items():
        print(f"  {rel}: {n} rows")
    print(f"  finetune/: {len(manifest['rows']) - len(pretrain)} files; vocab/: {manifest['bpe_size']}-token BPE")
    return 0
