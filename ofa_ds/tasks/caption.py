"""Image captioning, cross-entropy stage (spec ofa_data_and_tasks.md §5.1).

Rows: uniq_id, image_id, caption, objects (unused), base64 image; we read columns 0, 4, 2.
The image is resized to a square (bicubic, aspect ratio not kept) and normalised to
[-1, 1]; the source is " what does the image describe?"; the training target is the
caption without punctuation, cut to ``max_tgt_length`` words, with a leading space.
"""
from __future__ import annotations

import logging
import string
from pathlib import Path

import torch
from PIL import Image

from ofa_ds.data.bad_rows import BadRow, BadRowPolicy
from ofa_ds.data.collate import collate
from ofa_ds.data.sharding import EpochOrder, ShardCursor
from ofa_ds.data.streams.common import PROMPT_CAPTION, Sample
from ofa_ds.data.transforms import to_tensor
from ofa_ds.data.tsv import TSVFile, decode_base64_image
from ofa_ds.tasks.base import Task, with_moe_aux, move_to

logger = logging.getLogger("ofa_ds.tasks")
_PUNCT = str.maketrans("", "", string.punctuation)


def caption_target(caption: str, max_words: int) -> str:
    words = caption.translate(_PUNCT).strip().split()
    return " " + " ".join(words[:max_words])


class CaptionData:
    """Row i of a caption TSV -> Sample."""

    def __init__(self, path: str, vocab, *, image_size: int, max_tgt_length: int):
        self.file = TSVFile(path, selected_cols=[0, 4, 2])
        self.vocab = vocab
        self.image_size = image_size
        self.max_tgt_length = max_tgt_length
        self.source = vocab.encode_line(PROMPT_CAPTION)

    def __len__(self) -> int:
        return len(self.file)

    def references(self, i: int) -> list[str]:
        """Reference captions of row i ("&&"-joined in OFA's val/test files), punctuation removed."""
        caption = self.file.row(i)[2]
        return [" ".join(c.translate(_PUNCT).split()) for c in caption.split("&&")]

    def sample(self, i: int) -> Sample:
        uniq_id, image_b64, caption = self.file.row(i)
        image = decode_base64_image(image_b64, file=self.file.path, row=i, field="image")
        image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        text = caption_target(caption, self.max_tgt_length)
        if not text.strip():
            raise BadRow(str(self.file.path), i, "caption", "empty text")
        tgt = self.vocab.encode_line(text, add_bos=False, add_eos=False)
        eos, bos = torch.tensor([self.vocab.eos]), torch.tensor([self.vocab.bos])
        return Sample(id=uniq_id, source=self.source, target=torch.cat([tgt, eos]),
                      prev_output_tokens=torch.cat([bos, tgt]), patch_image=to_tensor(image),
                      patch_mask=True, code_mask=None, conf=1.0)


class CaptionLoader:
    """Micro-batches of this rank's shard, in a seeded per-epoch order; resumable.

    Samples are built in the training process (caption rows are cheap); bad rows are
    skipped, counted and named by the policy, and the batch is filled from the next rows.
    """

    def __init__(self, data: CaptionData, *, batch_size: int, rank: int, world_size: int, seed: int,
                 policy: BadRowPolicy):
        self.data, self.batch_size, self.policy = data, batch_size, policy
        self.cursor = ShardCursor(EpochOrder(len(data), seed), rank=rank, world_size=world_size)

    def __len__(self) -> int:
        return self.cursor.rows_per_epoch // self.batch_size

    def __iter__(self):
        for _ in range(len(self)):
            samples = []
            while len(samples) < self.batch_size:
                i = next(self.cursor)
                try:
                    samples.append(self.data.sample(i))
                except BadRow as err:
                    self.policy.record(err)
            yield collate(samples, pad=self.data.vocab.pad)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor.state_dict(), "bad_rows": self.policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.policy.load_state_dict(state["bad_rows"])


class CaptionTask(Task):
    name = "caption"

    def _data(self, rel_path: str) -> CaptionData:
        d = self.cfg.data
        return CaptionData(str(Path(d.root) / rel_path), self.vocab, image_size=d.patch_image_size,
                           max_tgt_length=d.max_tgt_length)

    def build_train_loader(self, *, rank, world_size, seed):
        return CaptionLoader(self._data(self.cfg.data.caption_train), batch_size=self.cfg.train.micro_batch,
                             rank=rank, world_size=world_size, seed=seed,
                             policy=BadRowPolicy(strict=self.cfg.data.strict))

    def training_forward(self, model, batch, *, denominators, update_num):
        out = self.group_loss(model, batch, update_num=update_num)
        loss = with_moe_aux(self, out.loss / max(denominators[0], 1))
        return loss, {"caption_loss": loss.item(), "ntokens": out.ntokens, "nsamples": batch["nsentences"]}

    def flops_inputs(self, batch):
        n = batch["net_input"]
        return [(n["patch_images"].shape[-1], n["src_tokens"].shape[1], n["prev_output_tokens"].shape[1],
                 batch["nsentences"], None)]

    @torch.no_grad()
    def evaluate(self, model, *, device, max_rows: int = 64) -> dict:
        """Validation loss per token and CIDEr-D of beam-search captions (OFA's model-selection
        metric; document frequencies from this validation set; rank-local)."""
        if not self.cfg.data.caption_valid:
            return {}
        from ofa_ds.generation import GenerationConfig, SequenceGenerator
        from ofa_ds.tasks.metrics import cider_d

        data = self._data(self.cfg.data.caption_valid)
        was_training = model.training
        model.eval()
        loss_sum, ntok, hyps, refs = 0.0, 0, [], []
        # OFA's caption decoding settings, at the configured beam and length.
        gen = SequenceGenerator(model, GenerationConfig(beam=self.cfg.task.eval_beam,
                                                        max_len_b=self.cfg.task.eval_max_len,
                                                        no_repeat_ngram_size=3))
        rows = list(range(min(len(data), max_rows)))
        for start in range(0, len(rows), 8):
            chunk = rows[start:start + 8]
            batch = move_to(collate([data.sample(i) for i in chunk], pad=self.vocab.pad), device,
                            next(model.parameters()).dtype)
            out = self.group_loss(model, batch, update_num=0)
            loss_sum, ntok = loss_sum + out.loss.item(), ntok + out.ntokens
            n = batch["net_input"]
            for hyp in gen.generate(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                                    patch_masks=n["patch_masks"]):
                hyps.append(" ".join(self.vocab.decode(hyp[0]["tokens"].tolist()).translate(_PUNCT).split()))
            refs += [data.references(i) for i in chunk]
        model.train(was_training)
        return {"valid_loss": loss_sum / max(ntok, 1), "valid_cider": cider_d(hyps, refs)}
