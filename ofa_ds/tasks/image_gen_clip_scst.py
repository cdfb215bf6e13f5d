"""Text-to-image stage 2: CLIP-reranked self-critical training (spec §4.5, §5.5).

Per caption, ``scst_samples`` code sequences are sampled (top-k 256, exactly N codes, eval
mode, no gradient), decoded to images by the VQ-GAN and scored by CLIP's image-text cosine
against the caption (the decoded source without its 38-character prompt); the reward of a
sample is its score minus the mean of the caption's other samples, and the loss is
``-reward * log p`` over the sampled codes (``ofa_ds/tasks/scst.py``), restricted to the code
range, normalised by the step's sampled-token count. Needs ``task.options.vqgan`` and
``task.options.clip`` (a Hugging Face ``CLIPModel`` directory with its tokenizer and image
processor, e.g. a download of openai/clip-vit-base-patch16; loaded with ``transformers``).
OFA's stage 2 settings: batch 1, lr 1e-6, 5k updates, dropout 0, ``model.freeze_resnet``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ofa_ds.tasks.image_gen import PROMPT_IMAGE_GEN, ImageGenTask, image_gen_config
from ofa_ds.tasks.scst import eval_mode, leave_one_out, repeat_net_input, scst_loss, with_scst_targets

CAPTION_START = len(PROMPT_IMAGE_GEN.format(""))  # 38: OFA strips the prompt by length


class ClipScorer:
    """Cosine similarity of CLIP's image and text embeddings, per (image, caption) pair."""

    def __init__(self, model, tokenizer, image_size: int, mean, std):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, path) -> "ClipScorer":
        try:
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer
        except ImportError as err:
            raise RuntimeError("CLIP rewards need transformers (pip install transformers)") from err
        proc = CLIPImageProcessor.from_pretrained(path)
        size = proc.crop_size["height"] if isinstance(proc.crop_size, dict) else proc.crop_size
        return cls(CLIPModel.from_pretrained(path), CLIPTokenizer.from_pretrained(path), size,
                   proc.image_mean, proc.image_std)

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """images in [0, 1] -> [B] cosine similarities (float64)."""
        x = torch.nn.functional.interpolate(images_B3HW.float(), size=(self.image_size, self.image_size),
                                            mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean) / self.std
        text = self.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        img = self.model.get_image_features(pixel_values=x)
        txt = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        return torch.nn.functional.cosine_similarity(img, txt, dim=-1).double()


class ImageGenClipScstTask(ImageGenTask):
    name = "image_gen_clip_scst"

    @dataclass
    class Options(ImageGenTask.Options):
        clip: str | None = None
        """Hugging Face CLIP directory (relative to data.root): the reward model."""
        scst_samples: int = 5
        """Code sequences sampled per caption in training (OFA: 5)."""

    def __init__(self, cfg, vocab, clip_scorer=None, vqgan=None):
        super().__init__(cfg, vocab)
        self._clip = clip_scorer
        if vqgan is not None:
            self._vqgan = vqgan
        self._rng = torch.Generator().manual_seed(cfg.train.seed)

    def clip_scorer(self) -> ClipScorer:
        if self._clip is None:
            if not self.options.clip:
                raise ValueError("task image_gen_clip_scst needs task.options.clip (a CLIP model directory)")
            self._clip = ClipScorer.from_pretrained(self.resolve_dir(self.options.clip))
        return self._clip

    def resolve_dir(self, rel: str):
        from pathlib import Path

        path = Path(rel) if Path(rel).is_absolute() else Path(self.cfg.data.root) / rel
        if not path.is_dir():
            raise ValueError(f"task.options.clip: {path} is not a directory (data.root = {self.cfg.data.root})")
        return path

    def prepare_step(self, model, batch: dict) -> dict:
        from ofa_ds.generation import SequenceGenerator

        if self._vqgan is None and not self.options.vqgan:
            raise ValueError("task image_gen_clip_scst needs task.options.vqgan (the decoder of the codes)")
        o = self.options
        K = o.scst_samples
        n = batch["net_input"]
        gen = SequenceGenerator(model, image_gen_config(self.vocab, self.num_codes, beam=K,
                                                        sampling_topk=o.sampling_topk, temperature=o.temperature),
                                rng=self._rng, progress=False)
        with eval_mode(model), torch.no_grad():
            hyps = gen.generate(n["src_tokens"], n["src_lengths"])
        samples = [h["tokens"].cpu() for hs in hyps for h in hs[:K]]
        codes = torch.stack([s[:-1] for s in samples]) - self.vocab.code_offset
        images = self.vqgan().decode(codes)
        captions = [self.vocab.decode(src)[CAPTION_START:].replace("/", "") for src in n["src_tokens"].cpu()]
        scores = self.clip_scorer()(images, [c for c in captions for _ in range(K)]).numpy()
        _, reward = leave_one_out(scores, K)
        return with_scst_targets(batch, samples, reward, bos=self.vocab.bos, pad=self.vocab.pad,
                                 mean_clip=float(scores.mean()))

    def training_forward(self, model, batch, *, denominators, update_num):
        s = batch["scst"]
        k = s["target"].shape[0] // batch["nsentences"]
        logits, _ = model(**repeat_net_input(batch["net_input"], k, s["prev_output_tokens"]))
        loss_sum, ntokens = scst_loss(logits, s["target"], s["reward"], pad=self.vocab.pad,
                                      constraint_range=self.loss_options.constraint_range)
        loss = loss_sum / max(denominators[0], 1)
        return loss, {"clip_scst_loss": loss.item(), "ntokens": ntokens, "nsamples": batch["nsentences"]}
