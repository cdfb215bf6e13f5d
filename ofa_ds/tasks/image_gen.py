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
(``ofa_ds/vqgan``). The metric is the mean log-probability of the true codes under the model
(higher is better), from the same forward as the evaluation loss; it needs no extra weights.

OFA's image metrics (``ofa_ds/tasks/image_metrics.py``), each when its weights are given:
``clip`` (with ``vqgan``): every sample is decoded, the samples of a caption are ranked by
CLIP similarity to it (the best is the prediction) and ``clip_score`` is the mean top
similarity; ``inception``: ``is_mean``/``is_std`` (Inception Score) of the top images, and
``fid`` against ``fid_stats`` (pytorch-fid's ``mu``/``sigma`` ``.npz``, e.g. OFA's COCO
ground-truth statistics) when given. Without ``clip`` the top image is the first sample.
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


def caption_of(vocab, src_tokens) -> str:
    """The caption CLIP reads: the decoded source without the prompt's 38 characters, "/" removed
    (OFA strips the prompt by length)."""
    return vocab.decode(src_tokens)[len(PROMPT_IMAGE_GEN.format("")):].replace("/", "")


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
        clip: str | None = None
        """Hugging Face CLIP directory (relative to data.root): ranks the samples (needs vqgan)."""
        inception: str | None = None
        """Inception-v3 state dict, torchvision layout (relative to data.root): IS, and FID with
        fid_stats. pytorch-fid's pt_inception-2015-12-05 weights give the published FID's network."""
        fid_stats: str | None = None
        """FID reference statistics, an .npz with mu and sigma (relative to data.root)."""
        decode_batch: int = 8
        """Images decoded (and scored) per VQ-GAN forward at evaluation."""
        seed: int = 7
        """Seed of the evaluation sampling (OFA validates with --fixed-validation-seed 7)."""

    def __init__(self, cfg, vocab, clip_scorer=None, vqgan=None, inception=None):
        super().__init__(cfg, vocab)
        start_end = self.loss_options.constraint_range or code_range(vocab)
        self.loss_options = LossOptions(**{**self.loss_options.__dict__, "constraint_range": start_end})
        self.num_codes = (cfg.data.code_image_size // 8) ** 2
        # weights given directly (tests, notebooks) win over the paths in task.options
        self._vqgan, self._clip, self._inception = vqgan, clip_scorer, inception
        o = self.options
        self.ranks_by_clip = bool(o.clip) or clip_scorer is not None
        self.scores_inception = bool(o.inception) or inception is not None
        if (self.ranks_by_clip or self.scores_inception) and not (o.vqgan or vqgan is not None):
            raise ValueError(f"task {self.name}: task.options.clip and .inception score images: "
                             "set task.options.vqgan (the decoder of the codes) too")

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
        tops = None
        if self.ranks_by_clip:
            tops = self._rank_by_clip(records, [caption_of(self.vocab, src) for src in n["src_tokens"].cpu()])
        if self.scores_inception:
            if tops is None:
                tops = self._decode([r["prediction"] for r in records])
            pool, cls = self.inception_net()(tops)
            for r, p, c in zip(records, pool.double().tolist(), cls.double().tolist()):
                r["inception_pool"], r["inception_logits"] = p, c
        return records

    def _decode(self, codes: list[list[int]]) -> torch.Tensor:
        """Code sequences -> images in [0, 1], ``decode_batch`` at a time."""
        vq, step = self.vqgan(), max(1, self.options.decode_batch)
        with torch.no_grad():
            return torch.cat([vq.decode(torch.tensor(codes[i:i + step])).float().cpu()
                              for i in range(0, len(codes), step)])

    def _rank_by_clip(self, records: list[dict], captions: list[str]) -> torch.Tensor:
        """Order each caption's samples by CLIP similarity (best first, the prediction);
        returns the top images [B, 3, H, W]."""
        clip, step = self.clip_scorer(), max(1, self.options.decode_batch)
        tops = []
        for r, caption in zip(records, captions):
            images = self._decode(r["samples"])
            sims = torch.cat([clip(images[i:i + step], [caption] * len(images[i:i + step]))
                              for i in range(0, len(images), step)])
            order = torch.argsort(sims, descending=True, stable=True).tolist()
            r["samples"] = [r["samples"][i] for i in order]
            r["clip_scores"] = [float(sims[i]) for i in order]
            r["prediction"], r["clip_score"] = r["samples"][0], r["clip_scores"][0]
            tops.append(images[order[0]])
        return torch.stack(tops)

    def score(self, records):
        from ofa_ds.tasks import image_metrics as im

        n = max(len(records), 1)
        out = {"code_logprob": sum(r["code_logprob"] for r in records) / n}
        if records and "clip_score" in records[0]:
            out["clip_score"] = sum(r["clip_score"] for r in records) / n
        if records and "inception_logits" in records[0]:
            out["is_mean"], out["is_std"] = im.inception_score([r["inception_logits"] for r in records])
            if self.options.fid_stats:
                mu, sigma = im.load_statistics(self.resolve(self.options.fid_stats, "task.options.fid_stats"))
                out["fid"] = im.frechet_distance(*im.feature_statistics([r["inception_pool"] for r in records]),
                                                 mu, sigma)
        return out

    def write_predictions(self, records, path: Path) -> None:
        """JSONL (id, the sampled codes best first, the true codes, CLIP similarities when
        ranked); with a VQ-GAN, each caption's top image as ``<stem>_images/<id>.png``."""
        with open(path, "w") as f:
            for r in records:
                line = {"id": r["id"], "samples": r["samples"], "target": r["target"]}
                if "clip_scores" in r:
                    line["clip_scores"] = r["clip_scores"]
                f.write(json.dumps(line) + "\n")
        if self._vqgan is not None or self.options.vqgan:
            from torchvision.utils import save_image

            out = path.with_name(path.stem + "_images")
            out.mkdir(exist_ok=True)
            for r in records:
                save_image(self._decode([r["prediction"]]), out / f"{r['id']}.png")

    # -- the scoring models, loaded on first use ------------------------------------------------
    def vqgan(self):
        if self._vqgan is None:
            from ofa_ds.vqgan import VQGAN

            if not self.options.vqgan:
                raise ValueError(f"task {self.name} needs task.options.vqgan (the decoder of the codes)")
            path = self.resolve(self.options.vqgan, "task.options.vqgan")
            self._vqgan = VQGAN.from_checkpoint(path, flavor=self.options.vqgan_flavor).eval()
        return self._vqgan

    def clip_scorer(self):
        if self._clip is None:
            from ofa_ds.tasks.image_metrics import ClipScorer

            if not self.options.clip:
                raise ValueError(f"task {self.name} needs task.options.clip (a CLIP model directory)")
            self._clip = ClipScorer.from_pretrained(self.resolve(self.options.clip, "task.options.clip",
                                                                 directory=True))
        return self._clip

    def inception_net(self):
        if self._inception is None:
            from ofa_ds.tasks.image_metrics import InceptionFeatures

            self._inception = InceptionFeatures.from_checkpoint(self.resolve(self.options.inception,
                                                                             "task.options.inception"))
        return self._inception
