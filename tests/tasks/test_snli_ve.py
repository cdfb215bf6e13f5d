"""SNLI-VE against the original OFA code (tasks/snli_ve.json of the fixture)."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.tasks import build_task
from ofa_ds.tasks.candidates import score_fast
from tests.tasks.golden import golden_config, golden_model, image_tensor, mask_rows, ofa_vocab, rows_of, task_json

FIX = task_json("snli_ve")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("OFA_DS_CACHE_DIR", str(tmp_path_factory.mktemp("tsv_index")))
    cfg = golden_config(tmp_path_factory.mktemp("snli"), "snli_ve", **{
        "task.train": "data/snli_ve_train.tsv", "task.valid": "data/snli_ve_dev.tsv", "task.label_smoothing": 0.0})
    yield build_task(cfg, ofa_vocab())
    mp.undo()


def test_samples_match_ofa(task):
    for split in ("train", "valid"):
        for i, ref in enumerate(FIX["samples"][split]):
            s = task.build_sample(split, i)
            assert s.id == ref["id"]
            for key in ("source", "target", "prev_output_tokens", "decoder_prompt"):
                assert getattr(s, key).tolist() == ref[key], key
            assert s.ref == ref["ref_dict"] and rows_of(s.constraint_rows) == ref["constraint_mask"]
            if i == 0:
                assert torch.equal(s.patch_image, image_tensor(ref["patch_image"]))


def test_criterion_scores_predictions_and_metric_match_ofa(task):
    model = golden_model()
    batch = task.collate([task.build_sample("valid", i) for i in range(3)])
    fields = FIX["batches"]["valid"]["fields"]
    assert batch["target"].tolist() == fields["target"]["value"]
    assert [mask_rows(m) for m in batch["constraint_masks"]] == fields["constraint_masks"]["rows"]
    with torch.no_grad():
        enc = task.encode(model, batch)
        logits, _ = model.decoder(batch["net_input"]["prev_output_tokens"], enc)
        out = task.cross_entropy(logits, batch["target"], batch["conf"], options=task.loss_options,
                                 constraint_masks_BTV=batch["constraint_masks"])
        scores = score_fast(model, enc, batch["decoder_prompts"], task.answer_set)
    ref = FIX["valid_step"]
    assert out.ntokens == ref["logging_output"]["sample_size"]
    assert float(out.loss) == pytest.approx(ref["logging_output"]["loss"], rel=5e-5)
    assert task.answer_set.answers == ref["candidate_order"]
    torch.testing.assert_close(scores, torch.tensor(ref["candidate_scores"]), atol=1e-4, rtol=0)
    predictions = [task.answer_set.answers[i] for i in scores.argmax(1).tolist()]
    assert predictions == ref["predictions"]
    records = [{"prediction": p, "target": r} for p, r in zip(predictions, batch["refs"])]
    assert round(task.score(records)["snli_score"], 3) == ref["reduced"]["snli_score"]
