"""What the answer-set heads share (VQA, SNLI-VE, ImageNet): decoder prompts, trie-masked
training targets, all-candidate or beam-search prediction, and the ``ref``-lookup score.

Decoder prompt types (spec §5.2), with ``src = [bos ; question ; eos]`` and answer tokens ``a``:

============  =====================  =====================================  ==============
prompt_type   prev_output_tokens     target (prompt positions = pad)        decoder prompt
============  =====================  =====================================  ==============
none          [bos ; a]              [a ; eos]                              [bos]
src           [src ; a]              [src[1:] ; a ; eos]                    src
prev_output   [src[:-1] ; a]         [src[1:-1] ; a ; eos]                  src[:-1]
============  =====================  =====================================  ==============

Constrained training: the prompt positions allow nothing, the answer positions what the trie
allows after ``[bos] + a_<j`` (spec §4.3). An answer outside the candidate set would get an
infinite loss upstream; here the row is reported as bad (file, row, field) instead.
"""
from __future__ import annotations

import torch
from PIL import Image

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.transforms import to_tensor
from ofa_ds.data.tsv import decode_base64_image
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.candidates import AnswerSet, score_fast
from ofa_ds.tasks.data import TaskSample

PROMPT_TYPES = ("none", "src", "prev_output")


def square_image(tsv, row: int, b64: str, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """Decode, resize to size x size (bicubic, aspect ratio not kept), normalise."""
    image = decode_base64_image(b64, file=tsv.path, row=row, field="image")
    return to_tensor(image.resize((size, size), Image.BICUBIC), mean, std)


class AnswerSetTask(FinetuneTask):
    """Subclasses set ``self.answer_set`` (an :class:`AnswerSet`) in ``__init__`` and build
    samples with :meth:`prompted_sample`."""

    answer_set: AnswerSet
    prompt_type = "prev_output"
    inference = "allcand"
    constrained = True
    beam_config = {"beam": 5, "normalize_scores": False, "max_len_b": 200, "temperature": 1.0}

    def prompted_sample(self, sample_id, src: torch.Tensor, answer: str, *, tsv, row: int, field: str,
                        image, conf: float, ref, split: str) -> TaskSample:
        v = self.vocab
        a = self.answer_tokens(answer)
        if not a:
            raise BadRow(str(tsv.path), row, field, "empty answer")
        if self.constrained and split == "train" and answer not in self.answer_set.index:
            raise BadRow(str(tsv.path), row, field, "answer not in the candidate set",
                         f"{answer!r} is not among the {len(self.answer_set)} candidates")
        a_t = torch.tensor(a, dtype=torch.long)
        eos = torch.tensor([v.eos])
        if self.prompt_type == "none":
            prompt = src[:1]
        elif self.prompt_type == "src":
            prompt = src
        else:
            prompt = src[:-1]
        prev = torch.cat([prompt, a_t])
        target = torch.cat([torch.full((len(prompt) - 1,), v.pad, dtype=torch.long), a_t, eos])
        rows = None
        if self.constrained:
            rows = [[] for _ in range(len(prompt) - 1)] + self.answer_set.constraint_rows(a)
        return TaskSample(id=sample_id, source=src, target=target, prev_output_tokens=prev,
                          patch_image=image, patch_mask=image is not None, code_mask=None, conf=conf,
                          constraint_rows=rows, decoder_prompt=prompt, ref=ref)

    def answer_tokens(self, answer: str) -> list[int]:
        return self.vocab.encode_line(" " + answer, add_bos=False, add_eos=False,
                                      max_tokens=self.cfg.data.max_tgt_length).tolist()

    def encode(self, model, batch) -> dict:
        n = batch["net_input"]
        return model.encoder(n["src_tokens"], n["src_lengths"], patch_images=n.get("patch_images"),
                             patch_masks=n.get("patch_masks"))

    def predict(self, model, batch) -> list[dict]:
        if self.inference == "beamsearch":
            return [{"prediction": p} for p in self.predict_beam(model, batch)]
        scores = score_fast(model, self.encode(model, batch), batch["decoder_prompts"], self.answer_set)
        return [{"prediction": self.answer_set.answers[i]} for i in scores.argmax(1).tolist()]

    def predict_beam(self, model, batch) -> list[str]:
        """Beam search with the question forced as prefix and the trie after it (spec §5.2)."""
        from ofa_ds.generation import GenerationConfig, SequenceGenerator

        n = batch["net_input"]
        gen = SequenceGenerator(model, GenerationConfig(**self.beam_config), constraint_trie=self.answer_set.trie)
        prefix = batch["prefix_tokens"]
        hyps = gen.generate(n["src_tokens"], n["src_lengths"], patch_images=n.get("patch_images"),
                            patch_masks=n.get("patch_masks"), prefix_tokens=prefix, encoder_out=self.encode(model, batch))
        lengths = prefix.ne(self.vocab.pad).sum(1).tolist()
        return [self.vocab.decode(h[0]["tokens"][p:].tolist()).strip() for h, p in zip(hyps, lengths)]

    def score(self, records: list[dict]) -> dict:
        """Mean of ref.get(prediction, 0): VQA's soft score, plain accuracy for one 1.0 label."""
        total = sum(float(r["target"].get(r["prediction"], 0.0)) for r in records)
        return {self.metric: total / max(len(records), 1)}
