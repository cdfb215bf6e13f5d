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

from ofa_ds.tasks.image_gen import ImageGenTask, caption_of, image_gen_config
from ofa_ds.tasks.scst import eval_mode, leave_one_out, repeat_net_input, scst_loss, with_scst_targets


class ImageGenClipScstTask(ImageGenTask):
    name = "image_gen_clip_scst"

    @dataclass
    class Options(ImageGenTask.Options):
        scst_samples: int = 5
        """Code sequences sampled per caption in training (OFA: 5)."""

    def __init__(self, cfg, vocab, clip_scorer=None, vqgan=None):
        super().__init__(cfg, vocab, clip_scorer=clip_scorer, vqgan=vqgan)
        self._rng = torch.Generator().manual_seed(cfg.train.seed)

    def prepare_step(self, model, batch: dict) -> dict:
        from ofa_ds.generation import SequenceGenerator

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
        captions = [caption_of(self.vocab, src) for src in n["src_tokens"].cpu()]
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
