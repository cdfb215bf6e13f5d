"""SCST (caption stage 2) against OFA's ScstRewardCriterion through the finetuning fixture:
rewards and baseline for fixed candidates, the golden model's 5 beams per image, and the
policy-gradient loss in train mode (BatchNorm on batch statistics)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ofa_ds.tasks.cider import DocumentFrequencies, scst_sentence
from ofa_ds.tasks.scst import eval_mode, scst_rewards
from tests.helpers import finetune_golden as fg


@pytest.fixture(scope="module")
def scst():
    return fg.task("scst")


@pytest.fixture(scope="module")
def train_df():
    return DocumentFrequencies.load(fg.data_file("cider_train_df_eos.json"))


def test_rewards_of_fixed_candidates(scst, train_df):
    ref = scst["reward_fixed_candidates"]
    scores, baseline, reward = scst_rewards(ref["gen_res"], ref["gt_res"], train_df)
    np.testing.assert_allclose(scores, ref["scores"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(reward, ref["reward"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(baseline, scst["scst_step_forced"]["baseline_recomputed"], rtol=0, atol=1e-9)
    # Leave-one-out baselines: the rewards of one image sum to zero.
    np.testing.assert_allclose(reward.reshape(2, 5).sum(1), 0.0, atol=1e-9)


def test_baseline_is_mean_of_other_beams(train_df):
    hyps = ["a cat", "a cat on a mat", "a dog", "a cat on a bed"]
    scores, baseline, reward = scst_rewards(hyps, [["a cat on a mat", "a cat"]], train_df)
    for j in range(4):
        assert baseline[0, j] == pytest.approx((scores.sum() - scores[j]) / 3)
    assert scores.max() > 0 and reward.sum() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        scst_rewards(hyps[:3], [["a cat"], ["a dog"]], train_df)


def test_document_frequencies_from_references_round_trip(tmp_path):
    refs = [["A cat, on a mat.", "a cat"], ["a dog"]]
    df = DocumentFrequencies.from_references(refs, wrap_eos=True)
    assert df.num_images == 2
    assert df.df[("a",)] == 2 and df.df[("cat",)] == 1 and df.df[("<eos>",)] == 2
    assert df.df[("mat", "<eos>")] == 1 and ("mat.",) not in df.df
    assert scst_sentence(" A cat, on a mat. ") == "A cat on a mat <eos>"
    df.save(tmp_path / "df.json")
    again = DocumentFrequencies.load(tmp_path / "df.json")
    assert again == df


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir):
    from ofa_ds.data.vocab import Vocabulary

    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture(scope="module")
def scst_task(vocab, ofa_bpe_dir):
    from ofa_ds.config.load import load_config
    from ofa_ds.tasks import build_task

    cfg = load_config(None, ["task.name=caption_scst", f"data.root={fg.root() / 'data'}",
                             "task.train=caption_stage2_train.tsv", "task.valid=caption_val.tsv",
                             f"data.vocab_dir={ofa_bpe_dir}", "data.patch_image_size=480",
                             "task.options.train_cider_df=cider_train_df_eos.json"])
    return build_task(cfg, vocab)


@pytest.fixture(scope="module")
def scst_batch(scst, scst_task, vocab):
    """The stage-2 train rows through our caption_scst task (ids, targets, images as OFA's)."""
    samples = [scst_task.build_sample("train", i) for i in range(scst_task.num_rows("train"))]
    for ours, ref in zip(samples, scst["samples"]["train"]):
        assert ours.id == ref["id"]
        assert ours.target.tolist() == ref["target"] and ours.prev_output_tokens.tolist() == ref["prev_output_tokens"]
        assert ours.source.tolist() == ref["source"]
    batch = scst_task.collate(samples)
    expected = fg.net_input(scst["batches"]["train"])
    for k, v in expected.items():
        assert torch.equal(batch["net_input"][k], v), k
    return batch, batch["refs"]


def _policy_loss(model, net_input, beams, reward, vocab):
    from ofa_ds.tasks.scst import repeat_net_input, scst_loss, teacher_forcing_pair

    prev, target = teacher_forcing_pair(beams, bos=vocab.bos, pad=vocab.pad)
    # A copy: train-mode BatchNorm updates its running statistics (the shared model must not change).
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        logits, _ = model(**repeat_net_input(net_input, 5, prev))
    return scst_loss(logits, target, torch.tensor(reward), pad=vocab.pad), target


def test_golden_scst_step(scst, scst_task, scst_batch, vocab, one_torch_thread):
    """The task's sampling step on the golden model: its 5 beams per image token for token,
    OFA's texts and references, all CIDEr 0 (so are the rewards and OFA's loss)."""
    batch, refs = scst_batch
    ref = scst["scst_step"]
    ready = scst_task.prepare_step(fg.golden_model(), batch)
    beams = [row[row.ne(vocab.pad)].tolist() for row in ready["scst"]["target"]]
    assert beams == ref["gen_target"]
    texts = [vocab.decode(b).strip() for b in beams]
    assert texts == ref["gen_res"] and refs == ref["gt_res"]
    scores, _, reward = scst_rewards(texts, refs, scst_task.train_df)
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-9)
    assert not ready["scst"]["reward"].any() and not reward.any() and ref["loss"] == 0.0
    assert ready["ntokens"] == ref["sample_size"] and scst_task.token_counts(ready) == [ref["sample_size"]]
    assert ready["scst"]["prev_output_tokens"][0].tolist()[:3] == [vocab.bos] + ref["gen_target"][0][:2]


def test_golden_scst_forced_loss(scst, scst_batch, vocab, train_df, one_torch_thread):
    """Fixed candidates as the beams: OFA's rewards and policy-gradient loss (train-mode BN)."""
    model = fg.golden_model()
    batch, refs = scst_batch
    ref = scst["scst_step_forced"]
    beams = [vocab.encode_line(" " + t, add_bos=False) for group in ref["forced_candidates"] for t in group]
    texts = [vocab.decode(b).strip() for b in beams]
    assert texts == ref["gen_res"]
    scores, _, reward = scst_rewards(texts, refs, train_df)
    np.testing.assert_allclose(reward, ref["reward"], atol=1e-9)
    (loss, ntokens), target = _policy_loss(model, batch["net_input"], beams, reward, vocab)
    assert target.tolist() == ref["gen_target_tokens"]
    assert ntokens == ref["sample_size"]
    assert float(loss) == pytest.approx(ref["loss"], rel=5e-5)
    assert scores.sum() == pytest.approx(ref["logging_output"]["score"], abs=1e-9)
