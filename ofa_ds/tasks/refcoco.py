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

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.collate import collate
from ofa_ds.data.streams.common import PROMPT_GROUNDING, Sample, pre_caption
from ofa_ds.data.transforms import resize, shorter_side_size, to_tensor
from ofa_ds.data.tsv import TSVFile, decode_base64_image


class GroundingData:
    """Row i of a RefCOCO-style TSV -> (Sample, box extras)."""

    def __init__(self, path: str, vocab, *, patch_image_size: int = 512, max_image_size: int = 512,
                 max_src_length: int = 80):
        self.file = TSVFile(path, selected_cols=[0, 4, 2, 3])
        self.vocab = vocab
        self.patch_image_size, self.max_image_size = patch_image_size, max_image_size
        self.max_src_length = max_src_length

    def __len__(self) -> int:
        return len(self.file)

    def region(self, i: int, text: str) -> torch.Tensor:
        try:
            box = [float(v) for v in text.strip().split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise BadRow(str(self.file.path), i, "region-coord", "unparsable box", f"{text!r}, expected 'x0,y0,x1,y1'")
        return torch.tensor(box)

    def sample(self, i: int) -> tuple[Sample, dict]:
        uniq_id, image_b64, text, region_text = self.file.row(i)
        region = self.region(i, region_text)
        image = decode_base64_image(image_b64, file=self.file.path, row=i, field="image")
        w, h = image.size
        new_w, new_h = shorter_side_size(w, h, self.patch_image_size, self.patch_image_size)
        image, boxes = resize(image, new_w, new_h, region[None])
        bins = torch.round(boxes[0] / self.max_image_size * (self.vocab.num_bins - 1)).long().tolist()
        v = self.vocab
        tgt = v.encode_line(" ".join(f"<bin_{b}>" for b in bins), add_bos=False, add_eos=False, use_bpe=False)
        caption = pre_caption(text, self.max_src_length)
        if not caption:
            raise BadRow(str(self.file.path), i, "text", "empty text")
        src = v.encode_line(PROMPT_GROUNDING.format(caption))
        sample = Sample(id=uniq_id, source=src, target=torch.cat([tgt, tgt.new_tensor([v.eos])]),
                        prev_output_tokens=torch.cat([tgt.new_tensor([v.bos]), tgt]), patch_image=to_tensor(image),
                        patch_mask=True, code_mask=None, conf=1.0)
        extras = {"w_resize_ratio": torch.tensor(new_w) / w, "h_resize_ratio": torch.tensor(new_h) / h,
                  "region_coord": region}
        return sample, extras


def collate_grounding(items: list[tuple[Sample, dict]], pad: int) -> dict:
    batch = collate([s for s, _ in items], pad=pad)
    batch["w_resize_ratios"] = torch.stack([e["w_resize_ratio"] for _, e in items])
    batch["h_resize_ratios"] = torch.stack([e["h_resize_ratio"] for _, e in items])
    batch["region_coords"] = torch.stack([e["region_coord"] for _, e in items])
    return batch


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
    and height), ``iou``, ``inter_w``, ``inter_h`` (OFA's Acc@0.5; IoU carries its +1e-6)."""
    top_left = torch.maximum(hyp_B4[:, :2], ref_B4[:, :2])
    bottom_right = torch.minimum(hyp_B4[:, 2:], ref_B4[:, 2:])
    inter_w, inter_h = bottom_right[:, 0] - top_left[:, 0], bottom_right[:, 1] - top_left[:, 1]
    area_h = (hyp_B4[:, 2] - hyp_B4[:, 0]) * (hyp_B4[:, 3] - hyp_B4[:, 1])
    area_r = (ref_B4[:, 2] - ref_B4[:, 0]) * (ref_B4[:, 3] - ref_B4[:, 1])
    inter = inter_w * inter_h
    iou = inter / (area_h + area_r - inter + 1e-6)
    score = ((iou >= threshold) & (inter_w > 0) & (inter_h > 0)).float()
    return {"score": score, "iou": iou, "inter_w": inter_w, "inter_h": inter_h}


def predicted_boxes(generator, batch: dict, vocab, *, max_image_size: int, encoder_out=None) -> torch.Tensor:
    """Best hypothesis of each sample -> pixel boxes [B, 4]."""
    n = batch["net_input"]
    hyps = generator.generate(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                              patch_masks=n["patch_masks"], encoder_out=encoder_out)
    tokens = torch.stack([h[0]["tokens"][:4] for h in hyps])
    return boxes_from_tokens(tokens, vocab, max_image_size=max_image_size,
                             w_ratio_B=batch["w_resize_ratios"], h_ratio_B=batch["h_resize_ratios"])
