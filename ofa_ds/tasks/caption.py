"""Image captioning, cross-entropy stage (spec ofa_data_and_tasks.md §5.1).

Rows: uniq_id, image_id, caption, objects (unused), base64 image; we read columns 0, 4, 2.
The image is resized to a square (bicubic, aspect ratio not kept) and normalised to
[-1, 1]; the source is " what does the image describe?"; the training target is the
caption without punctuation, cut to ``max_tgt_length`` words, with a leading space.
Evaluation: beam search (OFA's caption settings) and corpus CIDEr-D against the row's
"&&"-joined references; predictions are JSONL (id, prediction, target = the references).
"""
from __future__ import annotations

import string

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

    def build_sample(self, split: str, i: int) -> TaskSample:
        tsv = self.tsv(split)
        uniq_id, image_b64, caption = tsv.row(i)
        size = self.cfg.data.patch_image_size
        image = decode_base64_image(image_b64, file=tsv.path, row=i, field="image")
        image = image.resize((size, size), Image.BICUBIC)
        text = caption_target(caption, self.cfg.data.max_tgt_length)
        if not text.strip():
            raise BadRow(str(tsv.path), i, "caption", "empty text")
        tgt = self.vocab.encode_line(text, add_bos=False, add_eos=False)
        eos, bos = torch.tensor([self.vocab.eos]), torch.tensor([self.vocab.bos])
        return TaskSample(id=uniq_id, source=self.vocab.encode_line(PROMPT_CAPTION), target=torch.cat([tgt, eos]),
                          prev_output_tokens=torch.cat([bos, tgt]), patch_image=to_tensor(image),
                          patch_mask=True, code_mask=None, conf=1.0, ref=references(caption))

    def predict(self, model, batch) -> list[dict]:
        from ofa_ds.generation import GenerationConfig, SequenceGenerator

        # OFA's caption decoding settings, at the configured beam and length.
        gen = SequenceGenerator(model, GenerationConfig(beam=self.cfg.task.eval_beam,
                                                        max_len_b=self.cfg.task.eval_max_len,
                                                        no_repeat_ngram_size=3))
        n = batch["net_input"]
        hyps = gen.generate(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                            patch_masks=n["patch_masks"])
        return [{"prediction": " ".join(self.vocab.decode(h[0]["tokens"].tolist()).translate(_PUNCT).split())}
                for h in hyps]

    def score(self, records: list[dict]) -> dict:
        """Corpus CIDEr-D (OFA's model-selection metric; document frequencies from this split)."""
        from ofa_ds.tasks.metrics import cider_d

        return {"cider": cider_d([r["prediction"] for r in records], [r["target"] for r in records])}
