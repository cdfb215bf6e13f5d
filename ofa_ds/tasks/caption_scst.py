"""Caption stage 2: self-critical sequence training with CIDEr-D rewards (spec §4.4, §5.1).

Start from a stage-1 (cross-entropy) checkpoint (``model.init_from``). Rows are the caption
TSVs read as OFA's stage 2 (``selected_cols=1,4,2``: the id is the image id); every split's
target holds all the image's references joined by "&&", only to recover them. Each training
micro-batch first samples K beams per image with the model in eval mode (no gradient;
``prepare_step``), scores them against the references with CIDEr-D on the training document
frequencies, and then trains on ``-reward * log p`` of those beams in train mode
(``ofa_ds/tasks/scst.py``). The loss is normalised by the step's number of sampled tokens, as
OFA's sum over ``sample_size = ntokens``. Evaluation is the caption head's.
"""
from __future__ import annotations

from dataclasses import dataclass

from ofa_ds.tasks.caption import CaptionTask, references
from ofa_ds.tasks.cider import DocumentFrequencies
from ofa_ds.tasks.scst import repeat_net_input, sample_beams, scst_loss, scst_rewards, with_scst_targets


class CaptionScstTask(CaptionTask):
    name = "caption_scst"
    selected_cols = "1,4,2"

    @dataclass
    class Options(CaptionTask.Options):
        train_cider_df: str | None = None
        """Training document frequencies: OFA's ``coco-train-words.p`` (built with " <eos>"
        appended to every reference) or our JSON, relative to data.root; None: built from the
        train split's references the same way."""
        scst_beam: int = 5
        """Beams sampled per image (all of them are trained on)."""
        scst_max_len: int = 16
        scst_no_repeat_ngram_size: int = 3

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        if cfg.parallel.pp > 1:
            raise ValueError("task caption_scst does not run with parallel.pp > 1 (the sampled targets are not "
                             "pipeline micro-batches); use data and tensor parallelism")
        self._df: DocumentFrequencies | None = None
        self._generator = None

    def target_text(self, caption: str) -> str:
        return " " + "&&".join(references(caption))

    @property
    def train_df(self) -> DocumentFrequencies:
        if self._df is None:
            o = self.options
            if o.train_cider_df:
                self._df = DocumentFrequencies.load(self.resolve(o.train_cider_df, "task.options.train_cider_df"))
            else:
                tsv = self.tsv("train")
                self._df = DocumentFrequencies.from_references([references(tsv.row(i)[2]) for i in range(len(tsv))],
                                                               wrap_eos=True)
        return self._df

    def prepare_step(self, model, batch: dict) -> dict:
        """Sample the beams of this micro-batch and attach their rewards and targets."""
        from ofa_ds.generation import SequenceGenerator, task_generation_config

        o = self.options
        if self._generator is None or self._generator.model is not model:
            self._generator = SequenceGenerator(model, task_generation_config(
                "caption", beam=o.scst_beam, max_len_b=o.scst_max_len,
                no_repeat_ngram_size=o.scst_no_repeat_ngram_size), progress=False)
        beams = sample_beams(self._generator, batch["net_input"])
        texts = [self.vocab.decode(b).strip() for b in beams]
        scores, _, reward = scst_rewards(texts, batch["refs"], self.train_df)
        return with_scst_targets(batch, beams, reward, bos=self.vocab.bos, pad=self.vocab.pad,
                                 mean_cider=float(scores.mean()))

    def training_forward(self, model, batch, *, denominators, update_num):
        if "scst" not in batch:
            raise RuntimeError("caption_scst batches need prepare_step (the trainer calls it before the step)")
        s = batch["scst"]
        k = s["target"].shape[0] // batch["nsentences"]
        logits, _ = model(**repeat_net_input(batch["net_input"], k, s["prev_output_tokens"]))
        c = self.loss_options.constraint_range
        loss_sum, ntokens = scst_loss(logits, s["target"], s["reward"], pad=self.vocab.pad, constraint_range=c)
        loss = loss_sum / max(denominators[0], 1)
        return loss, {"scst_loss": loss.item(), "ntokens": ntokens, "nsamples": batch["nsentences"],
                      "sample_cider": s["mean_cider"]}

    def flops_inputs(self, batch):
        n = batch["net_input"]
        k = batch["scst"]["target"].shape[0] // batch["nsentences"] if "scst" in batch else 1
        return [(n["patch_images"].shape[-1], n["src_tokens"].shape[1], batch["target"].shape[1],
                 batch["nsentences"] * k, None)]
