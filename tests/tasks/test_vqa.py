"""VQA (vqa_gen) against the original OFA code: samples, batch, criterion, all-candidate and
beam-search validation, metric and the predictions file (tasks/vqa.json of the fixture)."""
from __future__ import annotations

import json

import pytest
import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.tasks import build_task
from ofa_ds.tasks.candidates import score_fast
from tests.tasks.golden import golden_config, golden_model, image_tensor, mask_rows, ofa_vocab, rows_of, task_json

FIX = task_json("vqa")
V = FIX["variants"]


def vqa_task(tmp_path, **options):
    extra = {f"task.options.{k}": v for k, v in options.items()}
    cfg = golden_config(tmp_path, "vqa_gen", **{"task.train": "data/vqa_train.tsv", "task.valid": "data/vqa_val.tsv",
                                                "task.options.ans2label": "data/vqa_ans2label.json",
                                                "task.label_smoothing": 0.1, **extra})
    return build_task(cfg, ofa_vocab())


def check_sample(ours, ref, *, image=True):
    assert str(ours.id) == ref["id"]
    for key in ("source", "target", "prev_output_tokens"):
        assert getattr(ours, key).tolist() == ref[key], key
    assert ours.decoder_prompt.tolist() == ref["decoder_prompt"]
    assert ours.ref == ref["ref_dict"] and torch.tensor(ours.conf).float().item() == ref["conf"][0]
    if "constraint_mask" in ref:
        assert rows_of(ours.constraint_rows) == ref["constraint_mask"]
    else:
        assert ours.constraint_rows is None
    if image:
        assert torch.equal(ours.patch_image, image_tensor(ref["patch_image"]))


@pytest.mark.parametrize("variant", ["allcand", "unconstrained"])
def test_samples_match_ofa(tmp_path, variant):
    task = vqa_task(tmp_path, unconstrained_training=variant == "unconstrained")
    refs = V[variant]["samples"]
    for split in ("train", "valid"):
        for i, ref in enumerate(refs[split]):
            if split == "train" and variant == "allcand" and i == 3:
                # "tabby cat" is not a candidate: OFA's loss would be nan; we name the row.
                with pytest.raises(BadRow, match=r"vqa_train.tsv: row 3, field 'answers': answer not in"):
                    task.build_sample(split, i)
                continue
            check_sample(task.build_sample(split, i), ref, image=(split, i) in (("train", 0), ("valid", 1)))


@pytest.mark.parametrize("prompt_type", ["none", "src"])
def test_prompt_type_variants(tmp_path, prompt_type):
    task = vqa_task(tmp_path, prompt_type=prompt_type)
    for i, ref in enumerate(V["allcand"]["samples_prompt_type_variants"][prompt_type]):
        check_sample(task.build_sample("valid", i), ref, image=False)
    task = vqa_task(tmp_path, add_object=False)
    for i, ref in enumerate(V["allcand"]["samples_without_add_object"]):
        check_sample(task.build_sample("valid", i), ref, image=False)


def batch_of(task, split, rows):
    return task.collate([task.build_sample(split, i) for i in rows])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """The golden model's encoder output of the train rows 0-3 and the valid rows 0-2, once
    (480 px images: the expensive part); every test below slices it."""
    task = vqa_task(tmp_path_factory.mktemp("vqa"), unconstrained_training=True)
    model = golden_model()
    out = {}
    with torch.no_grad():
        for split, rows in (("train", range(4)), ("valid", range(3))):
            out[split] = task.encode(model, batch_of(task, split, rows))
    return out


def rows_of_encoder_out(enc, rows):
    return {k: v[list(rows)] for k, v in enc.items()}


def loss_of(task, batch, enc, *, leaf_logits=False):
    logits, _ = golden_model().decoder(batch["net_input"]["prev_output_tokens"], enc)
    if leaf_logits:
        logits = logits.detach().requires_grad_()
    out = task.cross_entropy(logits, batch["target"], batch["conf"], options=task.loss_options,
                             constraint_masks_BTV=batch.get("constraint_masks"), pad=1, eos=2)
    return out, logits


@pytest.mark.parametrize("variant", ["allcand", "unconstrained"])
def test_batch_and_criterion_match_ofa(tmp_path, variant, encoded):
    task = vqa_task(tmp_path, unconstrained_training=variant == "unconstrained")
    fix = V[variant]
    for split in ("train", "valid"):
        rows = fix["batches"]["train_rows"] if split == "train" else range(3)
        batch = batch_of(task, split, rows)
        fields = fix["batches"][split]["fields"]
        for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
            assert batch["net_input"][key].tolist() == fields[f"net_input.{key}"]["value"], key
        assert batch["target"].tolist() == fields["target"]["value"]
        assert batch["ntokens"] == fields["ntokens"]["value"]
        assert batch["prefix_tokens"].tolist() == fields["prefix_tokens"]["value"]
        if fields.get("constraint_masks") is None:
            assert "constraint_masks" not in batch
        else:
            assert [mask_rows(m) for m in batch["constraint_masks"]] == fields["constraint_masks"]["rows"]
        with torch.no_grad():
            out, _ = loss_of(task, batch, rows_of_encoder_out(encoded[split], rows))
        ref = fix["criterion"][f"{split}_batch"]
        assert out.ntokens == ref["sample_size"]
        assert float(out.loss) == pytest.approx(ref["loss"], rel=5e-5)
        assert float(out.nll_loss) == pytest.approx(ref["logging_output"]["nll_loss"], rel=5e-5)


def test_constrained_loss_has_finite_gradients(tmp_path, encoded):
    """The prompt positions allow no token; their NaN softmax must not reach the backward."""
    task = vqa_task(tmp_path)
    batch = batch_of(task, "train", [0, 1, 2])
    out, logits = loss_of(task, batch, rows_of_encoder_out(encoded["train"], range(3)), leaf_logits=True)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_allcand_scores_predictions_and_metric_match_ofa(tmp_path, encoded, monkeypatch):
    task = vqa_task(tmp_path)
    model = golden_model()
    fix = V["allcand"]["valid_step"]
    assert task.answer_set.answers == fix["candidate_order"]
    batch = batch_of(task, "valid", range(3))
    enc = encoded["valid"]
    # The trie scorer; test_candidates.py shows it equals OFA's chunked full-pass scorer.
    fast = score_fast(model, enc, batch["decoder_prompts"], task.answer_set)
    torch.testing.assert_close(fast, torch.tensor(fix["candidate_scores"]), atol=1e-4, rtol=0)
    monkeypatch.setattr(task, "encode", lambda model, batch: enc)
    records = [{"id": str(2001 + i), "prediction": r["prediction"], "target": s}
               for i, (r, s) in enumerate(zip(task.predict(model, batch), batch["refs"]))]
    assert [r["prediction"] for r in records] == fix["predictions"]
    assert task.score(records)["vqa_score"] == pytest.approx(fix["reduced"]["vqa_score"], abs=1e-9)
    path = tmp_path / "pred.json"
    task.write_predictions(records, path)
    assert json.loads(path.read_text()) == V["allcand"]["offline_eval"]["results"]


def test_beamsearch_hypotheses_and_predictions_match_ofa(tmp_path, encoded, monkeypatch):
    task = vqa_task(tmp_path, val_inference="beamsearch")
    model = golden_model()
    fix = V["beamsearch"]["valid_step"]
    batch = batch_of(task, "valid", range(3))
    monkeypatch.setattr(task, "encode", lambda model, batch: encoded["valid"])
    assert [r["prediction"] for r in task.predict(model, batch)] == fix["predictions"]
    from ofa_ds.generation import GenerationConfig, SequenceGenerator

    n = batch["net_input"]
    gen = SequenceGenerator(model, GenerationConfig(**task.beam_config), constraint_trie=task.answer_set.trie)
    hyps = gen.generate(n["src_tokens"], n["src_lengths"], prefix_tokens=batch["prefix_tokens"],
                        encoder_out=encoded["valid"])
    for ours, ref in zip(hyps, fix["hypotheses"]):
        assert [h["tokens"].tolist() for h in ours] == [h["tokens"] for h in ref]
        assert [h["score"] for h in ours] == pytest.approx([h["score"] for h in ref], abs=1e-3)
