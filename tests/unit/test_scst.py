"""SCST (caption stage 2) against OFA's ScstRewardCriterion through the finetuning fixture:
rewards and baseline for fixed candidates, the golden model's 5 beams per image, and the
policy-gradient loss in train mode (BatchNorm on batch statistics)."""
from __future__ import annotations

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
def scst_batch(scst, vocab):
    """The stage-2 train rows through our caption data path (ids, targets, images as OFA's)."""
    from ofa_ds.data.collate import collate
    from ofa_ds.tasks.caption import CaptionData

    data = CaptionData(str(fg.data_file("caption_stage2_train.tsv")), vocab, image_size=480,
                       max_tgt_length=20, references_target=True)
    samples = [data.sample(i) for i in range(len(data))]
    for ours, ref in zip(samples, scst["samples"]["train"]):
        assert ours.id == ref["id"]
        assert ours.target.tolist() == ref["target"] and ours.prev_output_tokens.tolist() == ref["prev_output_tokens"]
        assert ours.source.tolist() == ref["source"]
    batch = collate(samples, pad=vocab.pad)
    expected = fg.net_input(scst["batches"]["train"])
    for k, v in expected.items():
        assert torch.equal(batch["net_input"][k], v), k
    return batch, [data.references(i) for i in range(len(data))]


def _policy_loss(model, net_input, beams, reward, vocab):
    from ofa_ds.tasks.scst import repeat_net_input, scst_loss, teacher_forcing_pair

    prev, target = teacher_forcing_pair(beams, bos=vocab.bos, pad=vocab.pad)
    model.train()
    try:
        with torch.no_grad():
            logits, _ = model(**repeat_net_input(net_input, 5, prev))
    finally:
        model.eval()
    return scst_loss(logits, target, torch.tensor(reward), pad=vocab.pad), target


def test_golden_scst_step(scst, scst_batch, vocab, train_df, one_torch_thread):
    """The golden model's 5 beams per image token for token; all CIDEr 0 so loss 0."""
    from ofa_ds.generation import GenerationConfig, SequenceGenerator
    from ofa_ds.tasks.scst import sample_beams

    model = fg.golden_model()
    batch, refs = scst_batch
    ref = scst["scst_step"]
    gen = SequenceGenerator(model, GenerationConfig(beam=5, max_len_b=16, no_repeat_ngram_size=3))
    beams = sample_beams(gen, batch["net_input"])
    assert [b.tolist() for b in beams] == ref["gen_target"]
    texts = [vocab.decode(b).strip() for b in beams]
    assert texts == ref["gen_res"]
    assert refs == [[r for r in g] for g in ref["gt_res"]]
    scores, _, reward = scst_rewards(texts, refs, train_df)
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-9)
    # Every reward is 0 (so is OFA's loss); the token count is the teacher-forced targets'.
    from ofa_ds.tasks.scst import teacher_forcing_pair

    assert not reward.any() and ref["loss"] == 0.0
    _, target = teacher_forcing_pair(beams, bos=vocab.bos, pad=vocab.pad)
    assert int(target.ne(vocab.pad).sum()) == ref["sample_size"]


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
