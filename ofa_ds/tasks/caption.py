"""Image captioning, cross-entropy stage (spec ofa_data_and_tasks.md §5.1).

Rows: uniq_id, image_id, caption, objects (unused), base64 image; we read columns 0, 4, 2.
The image is resized to a square (bicubic, aspect ratio not kept) and normalised to
[-1, 1]; the source is " what does the image describe?"; the training target is the
caption without punctuation, cut to ``max_tgt_length`` words, with a leading space.
Evaluation: beam search (OFA's caption settings) and CIDEr-D against the row's "&&"-joined
references (corpus document frequencies, or OFA's cached table with ``valid_cider_df``); the
predictions are JSONL plus a COCO results file (``[{"image_id", "caption"}]``), and on the test split
the COCO caption toolkit's BLEU-4, METEOR, ROUGE-L, CIDEr (and SPICE) are reported too
(``ofa_ds/tasks/coco_caption.py``). Stage 2 (SCST) is ``caption_scst.py``.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from PIL import Image

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import PROMPT_CAPTION
from ofa_ds.data.transforms import to_tensor
from ofa_ds.data.tsv import decode_base64_image
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.data import TaskSample

_PUNCT = str.maketrans("", "", string.punctuation)


def caption_target(caption: str, max_words: int) -> str:
    words = caption.translate(_PUNCT).strip().split()
    return " " + " ".join(words[:max_words])


def references(caption: str) -> list[str]:
    """Reference captions ("&&"-joined in OFA's val/test files), punctuation removed."""
    return [" ".join(c.translate(_PUNCT).split()) for c in caption.split("&&")]


class CaptionTask(FinetuneTask):
    name = "caption"
    default_splits = {"train": "finetune/caption/train.tsv", "valid": "finetune/caption/valid.tsv",
                      "test": "finetune/caption/test.tsv"}
    metric = "cider"
    selected_cols = "0,4,2"

    @dataclass
    class Options:
        valid_cider_df: str | None = None
        """CIDEr-D document frequencies for evaluation: OFA's ``coco-valid-words.p`` or our JSON
        (relative to data.root); None: from the evaluated split's references."""
        coco_toolkit: str = "test"
        """Splits also scored by the COCO caption toolkit: "test", "all" or "none"."""

        def validate(self):
            if self.coco_toolkit not in ("test", "all", "none"):
                raise ValueError(f"task.options.coco_toolkit: {self.coco_toolkit!r}, expected test, all or none")

    def target_text(self, caption: str) -> str:
        """The training target: the caption without punctuation, first max_tgt_length words."""
        return caption_target(caption, self.cfg.data.max_tgt_length)

    def build_sample(self, split: str, i: int) -> TaskSample:
        tsv = self.tsv(split)
        uniq_id, image_b64, caption = tsv.row(i)
        size = self.cfg.data.patch_image_size
        image = decode_base64_image(image_b64, file=tsv.path, row=i, field="image")
        image = image.resize((size, size), Image.BICUBIC)
        text = self.target_text(caption)
        if not text.strip():
            raise BadRow(str(tsv.path), i, "caption", "empty text")
        tgt = self.vocab.encode_line(text, add_bos=False, add_eos=False)
        eos, bos = torch.tensor([self.vocab.eos]), torch.tensor([self.vocab.bos])
        return TaskSample(id=uniq_id, source=self.vocab.encode_line(PROMPT_CAPTION), target=torch.cat([tgt, eos]),
                          prev_output_tokens=torch.cat([bos, tgt]), patch_image=to_tensor(image),
                          patch_mask=True, code_mask=None, conf=1.0, ref=references(caption))

    def predict(self, model, batch) -> list[dict]:
        from ofa_ds.generation import SequenceGenerator, task_generation_config

        # OFA's caption decoding settings, at the configured beam and length.
        gen = SequenceGenerator(model, task_generation_config("caption", beam=self.cfg.task.eval_beam,
                                                              max_len_b=self.cfg.task.eval_max_len))
        n = batch["net_input"]
        hyps = gen.generate(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                            patch_masks=n["patch_masks"])
        return [{"prediction": " ".join(self.vocab.decode(h[0]["tokens"].tolist()).translate(_PUNCT).split())}
                for h in hyps]

    def evaluate(self, model, *, device, split: str = "valid", **kwargs) -> dict:
        self._split = split  # the COCO toolkit runs on the splits task.options.coco_toolkit names
        return super().evaluate(model, device=device, split=split, **kwargs)

    def score(self, records: list[dict]) -> dict:
        """CIDEr-D (OFA's model-selection metric), plus the COCO toolkit's metrics where enabled."""
        from ofa_ds.tasks.cider import DocumentFrequencies
        from ofa_ds.tasks.metrics import cider_d

        df = None
        if self.options.valid_cider_df:
            df = DocumentFrequencies.load(self.resolve(self.options.valid_cider_df, "task.options.valid_cider_df"))
        hyps, refs = [r["prediction"] for r in records], [r["target"] for r in records]
        out = {"cider": cider_d(hyps, refs, document_frequencies=df)}
        toolkit = self.options.coco_toolkit
        if toolkit == "all" or (toolkit == "test" and getattr(self, "_split", "valid") == "test"):
            from ofa_ds.tasks.coco_caption import coco_caption_scores

            keys = [str(r["row"]) for r in records]
            coco = coco_caption_scores(dict(zip(keys, hyps)), dict(zip(keys, refs)))
            out.update({f"coco_{k}": v for k, v in coco.items() if k != "skipped"})
        return out

    def write_predictions(self, records: list[dict], path) -> None:
        """The JSONL predictions, and beside them (``*coco_results.json``) the COCO results
        file OFA's evaluate.py writes."""
        from ofa_ds.tasks.coco_caption import write_results

        super().write_predictions(records, path)
        write_results(path.with_name(path.name.replace("predictions.jsonl", "coco_results.json")),
                      [(r["id"], r["prediction"]) for r in records])
