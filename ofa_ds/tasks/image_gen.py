"""Text-to-image generation: the caption in, VQ-GAN image codes out (spec §5.5, §7.1-7.2).

Rows: uniq_id, codes (space-separated VQ-GAN ids, raster order), caption; read as columns
0, 2, 1 (OFA's ``selected_cols``). The source is ``" what is the complete image? caption:
{caption}"`` (caption cut to ``max_src_length`` words, no image input); the target is the
codes as ``<code_i>`` tokens then eos, with ``code_masks`` True (the decoder's image-code
positions). The loss is the label-smoothed cross entropy restricted to the specials and
the code range (``constraint_range``, set from the vocabulary).

The number of codes per image is ``(data.code_image_size / 8)**2``: OFA's 1024 for 256 px
(``data.code_image_size = 256``; the model's decoder code grid is set to it). Generation samples ``samples`` code sequences per caption
(top-k 256, temperature 1: OFA's settings) of exactly that length. Predictions hold the
sampled codes; with ``vqgan`` set they are decoded to PNGs beside the predictions file
(``ofa_ds/vqgan``). The metric without CLIP is the mean log-probability of the true codes
under the model (higher is better), from the same forward as the evaluation loss.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.criterion import LossOptions
from ofa_ds.tasks.data import TaskSample

PROMPT_IMAGE_GEN = " what is the complete image? caption: {}"


def image_gen_sample(vocab, fields: list[str], *, path: str, row: int, num_codes: int,
                     max_src_length: int = 64) -> TaskSample:
    uniq_id, caption, codes_text = fields
    try:
        codes = [int(c) for c in codes_text.split()]
    except ValueError:
        raise BadRow(path, row, "image-code", "codes are not integers") from None
    if len(codes) != num_codes:
        raise BadRow(path, row, "image-code", "wrong code count", f"{len(codes)} codes, expected {num_codes}")
    if any(not 0 <= c < vocab.code_dict_size for c in codes):
        raise BadRow(path, row, "image-code", "code out of range", f"codes must be in [0, {vocab.code_dict_size})")
    words = caption.strip().split()
    if not words:
        raise BadRow(path, row, "caption", "empty text")
    tgt = torch.tensor(codes, dtype=torch.long) + vocab.code_offset
    return TaskSample(id=uniq_id, source=vocab.encode_line(PROMPT_IMAGE_GEN.format(" ".join(words[:max_src_length]))),
                      target=torch.cat([tgt, tgt.new_tensor([vocab.eos])]),
                      prev_output_tokens=torch.cat([tgt.new_tensor([vocab.bos]), tgt]), patch_image=None,
                      patch_mask=False, code_mask=True, conf=1.0, ref=codes)


def code_range(vocab) -> tuple[int, int]:
    return vocab.code_offset, vocab.code_offset + vocab.code_dict_size


def image_gen_config(vocab, num_codes: int, **overrides):
    """OFA's sampling settings for ``num_codes`` codes per image (1024 in OFA)."""
    from ofa_ds.generation import task_generation_config

    return task_generation_config("image_gen", vocab, **{"min_len": num_codes, "max_len_b": num_codes, **overrides})


class ImageGenTask(FinetuneTask):
    name = "image_gen"
    default_splits = {"train": "finetune/image_gen/train.tsv", "valid": "finetune/image_gen/valid.tsv",
                      "test": "finetune/image_gen/test.tsv"}
    metric = "code_logprob"
    selected_cols = "0,2,1"

    @dataclass
    class Options:
        samples: int = 24
        """Code sequences sampled per caption at evaluation (OFA: 24, ranked by CLIP)."""
        sampling_topk: int = 256
        sampling_topp: float = -1.0
        temperature: float = 1.0
        max_src_length: int = 64
        """Caption words kept."""
        vqgan: str | None = None
        """VQ-GAN checkpoint (relative to data.root) to decode the sampled codes into PNGs."""
        vqgan_flavor: str = "gumbel_f8"
        seed: int = 7
        """Seed of the evaluation sampling (OFA validates with --fixed-validation-seed 7)."""

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        start_end = self.loss_options.constraint_range or code_range(vocab)
        self.loss_options = LossOptions(**{**self.loss_options.__dict__, "constraint_range": start_end})
        self.num_codes = (cfg.data.code_image_size // 8) ** 2
        self._vqgan = None

    def build_sample(self, split, i):
        tsv = self.tsv(split)
        return image_gen_sample(self.vocab, tsv.row(i), path=str(tsv.path), row=i, num_codes=self.num_codes,
                                max_src_length=self.options.max_src_length)

    def predict(self, model, batch):
        from ofa_ds.generation import SequenceGenerator

        o = self.options
        n = batch["net_input"]
        # log-probability of the true codes (teacher forced, over specials + codes)
        logits, _ = model(**n)
        start, end = self.loss_options.constraint_range
        logits = logits.float()
        logits[..., 4:start] = float("-inf")
        logits[..., end:] = float("-inf")
        lp = F.log_softmax(logits, -1).gather(-1, batch["target"].unsqueeze(-1)).squeeze(-1)
        keep = batch["target"].ne(self.vocab.pad)
        logprob = (lp * keep).sum(1) / keep.sum(1)
        rng = torch.Generator(device=n["src_tokens"].device).manual_seed(o.seed)
        gen = SequenceGenerator(model, image_gen_config(self.vocab, self.num_codes, beam=o.samples,
                                                        sampling_topk=o.sampling_topk, sampling_topp=o.sampling_topp,
                                                        temperature=o.temperature), rng=rng)
        hyps = gen.generate(n["src_tokens"], n["src_lengths"])
        records = []
        for h, lpb in zip(hyps, logprob.tolist()):
            codes = [(x["tokens"][:-1] - self.vocab.code_offset).tolist() for x in h]
            records.append({"prediction": codes[0], "samples": codes, "code_logprob": lpb})
        return records

    def score(self, records):
        n = max(len(records), 1)
        return {"code_logprob": sum(r["code_logprob"] for r in records) / n}

    def write_predictions(self, records, path: Path) -> None:
        """JSONL (id, the sampled codes, the true codes); with a VQ-GAN, each caption's first
        sample as ``<stem>_images/<id>.png``."""
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps({"id": r["id"], "samples": r["samples"], "target": r["target"]}) + "\n")
        if self.options.vqgan:
            from torchvision.utils import save_image

            vq = self.vqgan()
            out = path.with_name(path.stem + "_images")
            out.mkdir(exist_ok=True)
            for r in records:
                save_image(vq.decode(torch.tensor([r["prediction"]])), out / f"{r['id']}.png")

    def vqgan(self):
        if self._vqgan is None:
            from ofa_ds.vqgan import VQGAN

            path = self.resolve(self.options.vqgan, "task.options.vqgan")
            self._vqgan = VQGAN.from_checkpoint(path, flavor=self.options.vqgan_flavor).eval()
        return self._vqgan
