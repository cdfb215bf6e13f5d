"""Visual grounding: RefCOCO, RefCOCO+, RefCOCOg (spec ofa_data_and_tasks.md §5.3).

Rows: uniq_id, image_id, text, region "x0,y0,x1,y1" (pixels), base64 image; read as columns
0, 4, 2, 3. The image is resized to ``patch_image_size`` square (OFA's RandomResize with both
per-side clamps, no randomness), the box scaled alike, divided by ``max_image_size`` and
quantised to four ``<bin_i>`` tokens (x0, y0, x1, y1). Bins are not clamped, as in OFA: a
coordinate outside the image gives a ``<bin_-k>`` / ``<bin_1000+>`` symbol that is not in the
dictionary and becomes unk (fixture README quirk 6).

Evaluation: 4 tokens by beam search, bins back to pixels (``b / (num_bins-1) * max_image_size``,
then divided by the per-axis resize ratio), and Acc@0.5: correct iff IoU >= 0.5 with a
positive intersection width and height. Unlike OFA, decoding is restricted to bin tokens by
default (``constrain_bins``); OFA's unconstrained decoding is kept for parity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import PROMPT_GROUNDING, pre_caption
from ofa_ds.data.transforms import resize, shorter_side_size, to_tensor
from ofa_ds.data.tsv import decode_base64_image
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.data import TaskSample


def grounding_sample(vocab, fields: list[str], *, path: str, row: int, patch_image_size: int = 512,
                     max_image_size: int = 512, max_src_length: int = 80) -> TaskSample:
    """(uniq_id, image, text, region) of one row -> sample; ``extra`` holds the resize
    ratios, ``ref`` the original box."""
    uniq_id, image_b64, text, region_text = fields
    try:
        box = [float(v) for v in region_text.strip().split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise BadRow(path, row, "region-coord", "unparsable box", f"{region_text!r}, expected 'x0,y0,x1,y1'")
    region = torch.tensor(box)
    caption = pre_caption(text, max_src_length)
    if not caption:
        raise BadRow(path, row, "text", "empty text")
    image = decode_base64_image(image_b64, file=path, row=row, field="image")
    w, h = image.size
    new_w, new_h = shorter_side_size(w, h, patch_image_size, patch_image_size)
    image, boxes = resize(image, new_w, new_h, region[None])
    bins = torch.round(boxes[0] / max_image_size * (vocab.num_bins - 1)).long().tolist()
    tgt = vocab.encode_line(" ".join(f"<bin_{b}>" for b in bins), add_bos=False, add_eos=False, use_bpe=False)
    return TaskSample(id=uniq_id, source=vocab.encode_line(PROMPT_GROUNDING.format(caption)),
                      target=torch.cat([tgt, tgt.new_tensor([vocab.eos])]),
                      prev_output_tokens=torch.cat([tgt.new_tensor([vocab.bos]), tgt]), patch_image=to_tensor(image),
                      patch_mask=True, code_mask=None, conf=1.0, ref=region.tolist(),
                      extra={"w_resize_ratio": torch.tensor(new_w) / w, "h_resize_ratio": torch.tensor(new_h) / h})


def resize_ratios(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_ratios [B], h_ratios [B]) of a collated batch."""
    return (torch.stack([e["w_resize_ratio"] for e in batch["extra"]]),
            torch.stack([e["h_resize_ratio"] for e in batch["extra"]]))


def bin_constraint(vocab):
    """allowed_tokens_fn for the search: four bin tokens, then eos."""
    bins = list(range(vocab.bin_offset, vocab.bin_offset + vocab.num_bins))
    return lambda _sentence, prefix: bins if len(prefix) <= 4 else [vocab.eos]


def boxes_from_tokens(tokens_B4: torch.Tensor, vocab, *, max_image_size: int, w_ratio_B: torch.Tensor,
                      h_ratio_B: torch.Tensor) -> torch.Tensor:
    """Four generated tokens per sample -> boxes [B, 4] in original-image pixels. Non-bin
    tokens give out-of-range bins, as OFA computes them (token - bin_offset)."""
    bins = tokens_B4 - vocab.bin_offset
    boxes = bins / (vocab.num_bins - 1) * max_image_size
    boxes[:, ::2] /= w_ratio_B.unsqueeze(1)
    boxes[:, 1::2] /= h_ratio_B.unsqueeze(1)
    return boxes


def box_accuracy(hyp_B4: torch.Tensor, ref_B4: torch.Tensor, threshold: float = 0.5) -> dict:
    """Per-sample ``score`` (1.0 iff IoU >= threshold and the intersection has positive width
    and height), OFA's raw ``iou`` (with its +1e-6), ``true_iou`` (0 without an overlap),
    ``inter_w``, ``inter_h`` (OFA's Acc@0.5)."""
    top_left = torch.maximum(hyp_B4[:, :2], ref_B4[:, :2])
    bottom_right = torch.minimum(hyp_B4[:, 2:], ref_B4[:, 2:])
    inter_w, inter_h = bottom_right[:, 0] - top_left[:, 0], bottom_right[:, 1] - top_left[:, 1]
    area_h = (hyp_B4[:, 2] - hyp_B4[:, 0]) * (hyp_B4[:, 3] - hyp_B4[:, 1])
    area_r = (ref_B4[:, 2] - ref_B4[:, 0]) * (ref_B4[:, 3] - ref_B4[:, 1])
    inter = inter_w * inter_h
    iou = inter / (area_h + area_r - inter + 1e-6)
    overlap = (inter_w > 0) & (inter_h > 0)
    score = ((iou >= threshold) & overlap).float()
    # OFA's ratio is positive for an inverted box (both sides negative); the true IoU is 0 there.
    return {"score": score, "iou": iou, "true_iou": torch.where(overlap, iou, 0.0), "inter_w": inter_w,
            "inter_h": inter_h}


def predicted_boxes(generator, batch: dict, vocab, *, max_image_size: int, encoder_out=None) -> torch.Tensor:
    """Best hypothesis of each sample -> pixel boxes [B, 4]."""
    n = batch["net_input"]
    hyps = generator.generate(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                              patch_masks=n["patch_masks"], encoder_out=encoder_out)
    tokens = torch.stack([h[0]["tokens"][:4] for h in hyps])
    w_ratio, h_ratio = resize_ratios(batch)
    return boxes_from_tokens(tokens.cpu(), vocab, max_image_size=max_image_size, w_ratio_B=w_ratio, h_ratio_B=h_ratio)


class RefcocoTask(FinetuneTask):
    """RefCOCO / RefCOCO+ / RefCOCOg (the same task on other files)."""

    name = "refcoco"
    default_splits = {"train": "finetune/refcoco/train.tsv", "valid": "finetune/refcoco/valid.tsv",
                      "test": "finetune/refcoco/test.tsv"}
    metric = "acc"
    selected_cols = "0,4,2,3"
    predictions_name = "results.json"

    @dataclass
    class Options:
        constrain_bins: bool = True
        """Decode only <bin_i> tokens (4 of them, then eos); False: OFA's unconstrained search."""
        max_src_length: int = 80
        """Words of the referring expression kept (pre_caption)."""
        draw_boxes: int = 4
        """Images with predicted (red) and true (green) boxes written beside the predictions
        and to TensorBoard at each evaluation (0: none)."""

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        self._drawn: list = []
        self._eval_count = 0

    def build_sample(self, split, i):
        tsv = self.tsv(split)
        d = self.cfg.data
        return grounding_sample(self.vocab, tsv.row(i), path=str(tsv.path), row=i, patch_image_size=d.patch_image_size,
                                max_image_size=d.max_image_size, max_src_length=self.options.max_src_length)

    def generator(self, model):
        from ofa_ds.generation import SequenceGenerator, task_generation_config

        fn = bin_constraint(self.vocab) if self.options.constrain_bins else None
        return SequenceGenerator(model, task_generation_config("refcoco", beam=self.cfg.task.eval_beam),
                                 allowed_tokens_fn=fn)

    def predict(self, model, batch):
        boxes = predicted_boxes(self.generator(model), batch, self.vocab, max_image_size=self.cfg.data.max_image_size)
        acc = box_accuracy(boxes, torch.tensor(batch["refs"], dtype=boxes.dtype))
        records = [{"prediction": b, "score": float(s), "iou": float(u)}
                   for b, s, u in zip(boxes.tolist(), acc["score"], acc["true_iou"])]
        if self.options.draw_boxes and len(self._drawn) < self.options.draw_boxes:
            self._draw(batch, boxes)
        return records

    def _draw(self, batch, boxes) -> None:
        from torchvision.utils import draw_bounding_boxes

        images = batch["net_input"]["patch_images"]
        w_ratio, h_ratio = resize_ratios(batch)
        scale = torch.stack([w_ratio, h_ratio, w_ratio, h_ratio], 1)
        for b in range(min(len(boxes), self.options.draw_boxes - len(self._drawn))):
            img = ((images[b].float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
            both = torch.stack([boxes[b] * scale[b], torch.tensor(batch["refs"][b]) * scale[b]])
            # A weak model's box can be inverted or outside the image: draw its corner hull, clipped.
            both = torch.cat([torch.minimum(both[:, :2], both[:, 2:]), torch.maximum(both[:, :2], both[:, 2:])], 1)
            both = both.clamp(0, img.shape[-1] - 1)
            self._drawn.append(draw_bounding_boxes(img, both, colors=["red", "green"], width=3))

    def score(self, records):
        """Acc@0.5 (OFA's ``score``) and the mean IoU (an inverted or disjoint box counts 0)."""
        n = max(len(records), 1)
        return {"acc": sum(r["score"] for r in records) / n, "miou": sum(r["iou"] for r in records) / n}

    def write_predictions(self, records, path):
        """OFA's ``[{"uniq_id", "box"}]``; drawn images as ``<name>_boxes.png`` and in TensorBoard."""
        import json

        path.write_text(json.dumps([{"uniq_id": r["id"], "box": r["prediction"]} for r in records]))
        drawn, self._drawn = self._drawn, []
        if drawn:
            from torchvision.utils import make_grid, save_image

            grid = make_grid(drawn, nrow=len(drawn)).float() / 255
            save_image(grid, path.with_name(path.stem + "_boxes.png"))
            if self.cfg.train.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                with SummaryWriter(str(Path(self.cfg.train.out_dir) / "tensorboard")) as w:
                    w.add_image("eval/boxes (red: predicted, green: true)", grid, self._eval_count)
            self._eval_count += 1
