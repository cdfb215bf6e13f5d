"""ImageNet classification against the original OFA code (tasks/image_classify.json)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.tasks import build_task
from ofa_ds.tasks.candidates import score_fast
from tests.tasks.golden import golden_config, golden_model, image_tensor, mask_rows, ofa_vocab, rows_of, task_json

FIX = task_json("image_classify")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("OFA_DS_CACHE_DIR", str(tmp_path_factory.mktemp("tsv_index")))
    cfg = golden_config(tmp_path_factory.mktemp("imagenet"), "image_classify", **{
        "task.train": "data/imagenet_train.tsv", "task.valid": "data/imagenet_val.tsv",
        "task.options.class2label": "data/imagenet_class2label.json", "task.label_smoothing": 0.1})
    yield build_task(cfg, ofa_vocab())
    mp.undo()


def check(s, ref):
    assert s.id == ref["id"]
    for key in ("source", "target", "prev_output_tokens"):
        assert getattr(s, key).tolist() == ref[key], key
    assert s.ref == ref["ref_dict"] and rows_of(s.constraint_rows) == ref["constraint_mask"]


def test_samples_match_ofa(task):
    for i, ref in enumerate(FIX["samples"]["valid"]):
        s = task.build_sample("valid", i)
        check(s, ref)
        assert torch.equal(s.patch_image, image_tensor(ref["patch_image"]))  # resize + ImageNet mean/std
    for i, ref in enumerate(FIX["samples"]["train"]):
        s = task.build_sample("train", i)  # the random transform: same fields, our own draws
        check(s, ref)
        assert s.patch_image.shape == image_tensor(ref["patch_image"]).shape and torch.isfinite(s.patch_image).all()


def test_unknown_class_name_is_a_named_bad_row(task, monkeypatch):
    monkeypatch.setattr(task.tsv("train"), "row", lambda i: ("", "okapi"))
    with pytest.raises(BadRow, match="row 0, field 'class name': answer not in the candidate set"):
        task.prompted_sample(0, torch.tensor([0, 2]), "okapi", tsv=task.tsv("train"), row=0, field="class name",
                             image=None, conf=1.0, ref={}, split="train")


def test_criterion_scores_predictions_and_metric_match_ofa(task):
    model = golden_model()
    for split in ("train", "valid"):
        # OFA's own train images (its random draws) through our targets and masks.
        samples = [dataclasses.replace(task.build_sample(split, i), patch_image=image_tensor(r["patch_image"]))
                   for i, r in enumerate(FIX["samples"][split])]
        batch = task.collate(samples)
        assert [mask_rows(m) for m in batch["constraint_masks"]] == FIX["batches"][split]["fields"]["constraint_masks"]["rows"]
        with torch.no_grad():
            enc = task.encode(model, batch)
            logits, _ = model.decoder(batch["net_input"]["prev_output_tokens"], enc)
            out = task.cross_entropy(logits, batch["target"], batch["conf"], options=task.loss_options,
                                     constraint_masks_BTV=batch["constraint_masks"])
            ref = FIX["criterion"][f"{split}_batch"]
            assert out.ntokens == ref["sample_size"]
            assert float(out.loss) == pytest.approx(ref["loss"], rel=5e-5)
            if split == "valid":
                step = FIX["valid_step"]
                assert task.answer_set.answers == step["candidate_order"]
                scores = score_fast(model, enc, batch["decoder_prompts"], task.answer_set)
                torch.testing.assert_close(scores, torch.tensor(step["candidate_scores"]), atol=1e-4, rtol=0)
                preds = [task.answer_set.answers[k] for k in scores.argmax(1).tolist()]
                assert preds == step["predictions"]
                records = [{"prediction": p, "target": r} for p, r in zip(preds, batch["refs"])]
                assert round(task.score(records)["accuracy"], 3) == step["reduced"]["score"]
