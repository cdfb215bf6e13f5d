"""Visual grounding against OFA's RefcocoDataset / RefcocoTask through the finetuning
fixture: samples and batches, the criterion, the golden model's 4-token boxes, pixel boxes,
IoU and Acc@0.5; and the bin-constrained decoding we use by default."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.generation import GenerationConfig, SequenceGenerator
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy
from ofa_ds.data.tsv import TSVFile
from ofa_ds.tasks.data import collate_task
from ofa_ds.tasks.refcoco import (bin_constraint, box_accuracy, boxes_from_tokens, grounding_sample,
                                  predicted_boxes, resize_ratios)
from tests.helpers import finetune_golden as fg


@pytest.fixture(scope="module")
def ref():
    return fg.task("refcoco")


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir):
    from ofa_ds.data.vocab import Vocabulary

    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture(scope="module")
def batches(ref, vocab):
    out = {}
    for split in ("train", "valid"):
        tsv = TSVFile(fg.data_file(f"refcoco_{'val' if split == 'valid' else split}.tsv"), selected_cols="0,4,2,3")
        items = [grounding_sample(vocab, tsv.row(i), path=str(tsv.path), row=i) for i in range(len(tsv))]
        for s, want in zip(items, ref["samples"][split]):
            assert s.id == want["id"] and s.source.tolist() == want["source"]
            assert s.target.tolist() == want["target"] and s.prev_output_tokens.tolist() == want["prev_output_tokens"]
            assert float(s.extra["w_resize_ratio"]) == want["w_resize_ratio"]
            assert float(s.extra["h_resize_ratio"]) == want["h_resize_ratio"]
            assert s.ref == want["region_coord"]
        batch = collate_task(items, pad=vocab.pad, vocab_size=len(vocab))
        fields = ref["batches"][split]["fields"]
        for k, v in fg.net_input(ref["batches"][split]).items():
            assert torch.equal(batch["net_input"][k], v), k
        w, h = resize_ratios(batch)
        assert w.tolist() == fields["w_resize_ratios"]["value"] and h.tolist() == fields["h_resize_ratios"]["value"]
        assert batch["refs"] == fields["region_coords"]["value"]
        out[split] = batch
    return out


@pytest.fixture(scope="module")
def valid_encoded(batches):
    """The golden encoder on the valid batch, shared by the tests below (512 px images)."""
    n = batches["valid"]["net_input"]
    with torch.no_grad():
        return fg.golden_model().encoder(n["src_tokens"], n["src_lengths"], patch_images=n["patch_images"],
                                         patch_masks=n["patch_masks"])


def test_criterion_matches_ofa(ref, batches, valid_encoded):
    b = batches["valid"]
    with torch.no_grad():
        logits, _ = fg.golden_model().decoder(b["net_input"]["prev_output_tokens"], valid_encoded)
    out = label_smoothed_cross_entropy(logits, b["target"], None, options=LossOptions(label_smoothing=0.1))
    want = ref["criterion"]["valid_batch"]
    assert out.ntokens == want["sample_size"]
    assert float(out.loss) == pytest.approx(want["loss"], rel=5e-5)


def test_golden_boxes_iou_and_accuracy(ref, batches, valid_encoded, vocab, one_torch_thread):
    """OFA's unconstrained 4-token search on the golden model, token for token; its (huge,
    negative) pixel boxes, IoU and score."""
    model = fg.golden_model()
    b = batches["valid"]
    want = ref["valid_step"]
    gen = SequenceGenerator(model, GenerationConfig(beam=5, min_len=4, max_len_b=4))
    n = b["net_input"]
    hyps = gen.generate(n["src_tokens"], n["src_lengths"], encoder_out=valid_encoded)
    for ours, theirs in zip(hyps, want["hypotheses"]):
        assert [h["tokens"].tolist() for h in ours] == [h["tokens"] for h in theirs]
        assert [h["score"] for h in ours] == pytest.approx([h["score"] for h in theirs], abs=1e-3)
    tokens = torch.stack([h[0]["tokens"][:4] for h in hyps])
    assert (tokens - vocab.bin_offset).tolist() == want["hyp_bins"]
    boxes = boxes_from_tokens(tokens, vocab, max_image_size=512, w_ratio_B=resize_ratios(b)[0],
                              h_ratio_B=resize_ratios(b)[1])
    torch.testing.assert_close(boxes, torch.tensor(want["hyp_boxes_px"]), rtol=1e-6, atol=0)
    acc = box_accuracy(boxes, torch.tensor(b["refs"]))
    for k in ("iou", "inter_w", "inter_h"):
        torch.testing.assert_close(acc[k], torch.tensor(want[k]), rtol=1e-6, atol=1e-9)
    assert acc["score"].tolist() == want["scores"]


def test_forced_boxes_score_as_ofa(ref, batches, vocab):
    b = batches["valid"]
    want = ref["valid_step_forced"]
    tokens = torch.tensor(want["forced_tokens"])[:, :4]
    assert (tokens - vocab.bin_offset).tolist() == want["hyp_bins"]
    boxes = boxes_from_tokens(tokens, vocab, max_image_size=512, w_ratio_B=resize_ratios(b)[0],
                              h_ratio_B=resize_ratios(b)[1])
    torch.testing.assert_close(boxes, torch.tensor(want["hyp_boxes_px"]), rtol=1e-6, atol=1e-6)
    acc = box_accuracy(boxes, torch.tensor(b["refs"]))
    torch.testing.assert_close(acc["iou"], torch.tensor(want["iou"]), rtol=1e-6, atol=1e-7)
    assert acc["score"].tolist() == want["scores"] and acc["score"].mean().item() == pytest.approx(2 / 3)


def test_inverted_box_has_no_true_iou():
    """OFA's ratio is positive for an inverted box (both intersection sides negative): it
    fails Acc@0.5 there, and the mean IoU we report counts it as 0."""
    ref = torch.tensor([[10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.0]])
    hyp = torch.tensor([[40.0, 40.0, 20.0, 20.0], [10.0, 10.0, 50.0, 30.0]])
    acc = box_accuracy(hyp, ref)
    assert acc["iou"][0] > 0 and acc["true_iou"][0] == 0 and acc["score"][0] == 0
    assert acc["true_iou"][1] == pytest.approx(0.5) and acc["score"][1] == 1


def test_bin_constrained_decoding_gives_boxes(batches, valid_encoded, vocab, one_torch_thread):
    model = fg.golden_model()
    gen = SequenceGenerator(model, GenerationConfig(beam=5, min_len=4, max_len_b=4),
                            allowed_tokens_fn=bin_constraint(vocab))
    boxes = predicted_boxes(gen, batches["valid"], vocab, max_image_size=512, encoder_out=valid_encoded)
    assert boxes.shape == (3, 4) and bool((boxes >= 0).all())
    # within the original images (512 px canvas / ratio)
    assert bool((boxes[:, 2] <= 512 / resize_ratios(batches["valid"])[0] + 1e-3).all())
