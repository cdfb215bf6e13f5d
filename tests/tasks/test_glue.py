"""GLUE (7 subtasks) against the original OFA code (tasks/glue.json of the fixture)."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.tasks import build_task
from tests.tasks.golden import golden_config, golden_model, mask_rows, ofa_vocab, rows_of, task_json

FIX = task_json("glue")["subtasks"]


def glue_task(tmp_path, name):
    cfg = golden_config(tmp_path, name, **{"task.train": f"data/glue/{name}_train.tsv",
                                           "task.valid": f"data/glue/{name}_dev.tsv", "data.max_src_length": 512})
    return build_task(cfg, ofa_vocab())


@pytest.mark.parametrize("name", list(FIX))
def test_glue_matches_ofa(tmp_path, name):
    fix = FIX[name]
    task = glue_task(tmp_path, name)
    assert [task.answer_tokens[a] for a in fix["candidate_texts"]] == fix["candidate_tokens"]
    model = golden_model()
    for split in ("train", "valid"):
        samples = [task.build_sample(split, i) for i in range(len(fix["samples"][split]))]
        for s, ref in zip(samples, fix["samples"][split]):
            for key in ("source", "target", "prev_output_tokens"):
                assert getattr(s, key).tolist() == ref[key], key
            assert s.ref == ref["ref_dict"] and rows_of(s.constraint_rows) == ref["constraint_mask"]
        batch = task.collate(samples)
        fields = fix["batches"][split]["fields"]
        assert batch["target"].tolist() == fields["target"]["value"]
        assert batch["net_input"]["prev_output_tokens"].tolist() == fields["net_input.prev_output_tokens"]["value"]
        assert [mask_rows(m) for m in batch["constraint_masks"]] == fields["constraint_masks"]["rows"]
        n = batch["net_input"]
        with torch.no_grad():  # one forward per batch: the loss and the prediction share it
            logits, _ = model(n["src_tokens"], n["src_lengths"], n["prev_output_tokens"])
            out = task.cross_entropy(logits, batch["target"], batch["conf"], options=task.loss_options,
                                     constraint_masks_BTV=batch["constraint_masks"])
            ref = fix["criterion"][f"{split}_batch"]
            assert out.ntokens == ref["sample_size"]
            assert float(out.loss) == pytest.approx(ref["loss"], rel=5e-5)
            if split == "valid":
                step = fix["valid_step"]
                cand = task.candidates_at_last(logits, n["prev_output_tokens"])
                order = [task.candidate_ids.index(t) for t in fix["candidate_tokens"]]
                torch.testing.assert_close(cand[:, order], torch.tensor(step["candidate_logits"]), atol=1e-4, rtol=0)
                records = [{"prediction": p, "target": r} for p, r in zip(task.predictions_from(cand), batch["refs"])]
                assert [r["prediction"] for r in records] == step["predictions"]
                metrics = task.score(records)
                if step.get("reduced"):
                    for k, v in step["reduced"].items():
                        if k in metrics:
                            assert round(metrics[k], 3 if k == "F1" else 4) == v, k
                else:  # OFA divides by zero on this batch; we report 0
                    assert "ZeroDivisionError" in step["reduced_error"] and metrics["mcc"] == 0.0


@pytest.mark.parametrize("name", ["cola", "qqp"])
def test_metrics_on_fixed_counts(tmp_path, name):
    task = glue_task(tmp_path, name)
    for case in FIX[name]["metric_on_fixed_counts"]:
        c = case["counts"]
        preds = ["yes"] * (c["TP"] + c["FP"]) + ["no"] * (c["TN"] + c["FN"])
        refs = ["yes"] * c["TP"] + ["no"] * c["FP"] + ["no"] * c["TN"] + ["yes"] * c["FN"]
        m = task.score([{"prediction": p, "target": {t: 1.0}} for p, t in zip(preds, refs)])
        if "reduced" in case:
            for k, v in case["reduced"].items():
                assert round(m[k], 3 if k == "F1" else 4) == v, (k, c)
        else:
            assert m["mcc" if name == "cola" else "F1"] == 0.0
