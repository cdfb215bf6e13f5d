"""Gigaword against OFA's SummaryDataset / GigawordTask through the finetuning fixture:
normalisation, decoder-input noise (through its recorded draws), criterion, the golden
model's beam search, fix_tokenization and ROUGE."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.generation import task_generation_config, SequenceGenerator
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy
from ofa_ds.data.tsv import TSVFile
from ofa_ds.tasks.data import collate_task
from ofa_ds.tasks.gigaword import add_noise, fix_tokenization, gigaword_sample, postprocess_hypothesis, rouge_scores
from tests.helpers import finetune_golden as fg


@pytest.fixture(scope="module")
def ref():
    return fg.task("gigaword")


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir):
    from ofa_ds.data.vocab import Vocabulary

    return Vocabulary.from_dir(ofa_bpe_dir)


def _samples(vocab, split, seed0=None, **kw):
    tsv = TSVFile(fg.data_file(f"gigaword_{split}.tsv"), selected_cols="0,1")
    return [gigaword_sample(vocab, tsv.row(i), path=str(tsv.path), row=i, **kw,
                            noise_rng=None if seed0 is None else torch.Generator().manual_seed(seed0 + i))
            for i in range(len(tsv))]


def test_samples_and_noise_match_ofa(ref, vocab):
    for split, seed0 in (("train", 150), ("dev", 160)):
        key = "train" if split == "train" else "valid"
        # OFA seeded torch's global generator with seed0 + i before building sample i.
        samples = _samples(vocab, split, seed0, noise_ratio=0.2)
        for s, want, trace in zip(samples, ref["samples"][key], ref["noise_trace"][key]):
            assert s.source.tolist() == want["source"] and s.target.tolist() == want["target"]
            assert s.ref == want["target_str"]
            assert s.prev_output_tokens.tolist() == [vocab.bos] + trace["tokens_out"] == want["prev_output_tokens"]
    # The leading "##" of a headline is stripped from the target but kept in the ROUGE reference.
    s = _samples(vocab, "train")[1]
    assert s.ref.startswith("## killed") and vocab.decode(s.target).startswith("killed")


def test_noise_draws_are_ofa_draws(ref):
    trace = ref["noise_trace"]["train"][1]
    g = torch.Generator().manual_seed(151)
    draws = torch.empty(len(trace["tokens_in"])).uniform_(generator=g)
    assert draws.tolist() == pytest.approx(trace["uniform_draws"], abs=0)
    out = add_noise(torch.tensor(trace["tokens_in"]), 0.2, high=50265, generator=torch.Generator().manual_seed(151))
    assert out.tolist() == trace["tokens_out"]


def test_fix_tokenization_matches_ofa(ref):
    cases = ref["fix_tokenization"]
    assert [fix_tokenization(t) for t in cases["inputs"]] == cases["outputs"]
    assert fix_tokenization("the U . N . said") == "the U.N. said"


def test_rouge_of_fixed_hypotheses(ref):
    forced = ref["valid_step_forced"]
    preds = [postprocess_hypothesis(t) for t in forced["forced_hypothesis_texts"]]
    assert preds == forced["rouge_inputs"]["predictions"]
    scores = rouge_scores(preds, forced["rouge_inputs"]["references"])
    for k in ("rouge1_f1", "rouge2_f1", "rougeL_f1", "rouge1_recall", "rougeL_recall"):
        assert scores[k] == pytest.approx(forced["reduced"][k], abs=1e-9), k


@pytest.fixture(scope="module")
def valid_batch(ref, vocab):
    items = _samples(vocab, "dev")
    for s, want in zip(items, ref["samples"]["valid_noise_ratio_0"]):
        assert s.prev_output_tokens.tolist() == want["prev_output_tokens"] and s.ref == want["target_str"]
    batch = collate_task(items, pad=vocab.pad, vocab_size=len(vocab))
    assert batch["net_input"]["patch_images"] is None
    for k, v in fg.net_input(ref["batches"]["valid_noise_ratio_0"]).items():
        assert torch.equal(batch["net_input"][k], v), k
    return batch, batch["refs"]


def test_criterion_and_golden_beam_search(ref, valid_batch, vocab, one_torch_thread):
    model = fg.golden_model()
    batch, refs = valid_batch
    n = batch["net_input"]
    with torch.no_grad():
        encoded = model.encoder(n["src_tokens"], n["src_lengths"])
        logits, _ = model.decoder(n["prev_output_tokens"], encoded)
    out = label_smoothed_cross_entropy(logits, batch["target"], None, options=LossOptions(label_smoothing=0.1))
    want = ref["criterion"]["valid_batch_noise_ratio_0"]
    assert out.ntokens == want["sample_size"] and float(out.loss) == pytest.approx(want["loss"], rel=5e-5)

    gen = SequenceGenerator(model, task_generation_config("gigaword"))
    hyps = gen.generate(n["src_tokens"], n["src_lengths"], encoder_out=encoded)
    step = ref["valid_step"]
    for ours, theirs in zip(hyps, step["hypotheses"]):
        assert ours[0]["tokens"].tolist() == theirs[0]["tokens"]
        assert ours[0]["score"] == pytest.approx(theirs[0]["score"], abs=1e-3)
    preds = [postprocess_hypothesis(vocab.decode(h[0]["tokens"])) for h in hyps]
    assert preds == step["rouge_inputs"]["predictions"] and refs == step["rouge_inputs"]["references"]
    assert rouge_scores(preds, refs)["rougeL_f1"] == step["reduced"]["rougeL_f1"]
