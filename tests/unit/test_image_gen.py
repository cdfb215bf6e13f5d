"""Text-to-image against OFA's ImageGenDataset / ImageGenTask through the finetuning fixture:
samples, the code-range criterion, the first sampling step's distribution on the golden
model; sampling gives exactly N codes then eos."""
from __future__ import annotations

import functools

import pytest
import torch

from ofa_ds.data.tsv import TSVFile
from ofa_ds.generation import SequenceGenerator
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy
from ofa_ds.tasks.data import collate_task
from ofa_ds.tasks.image_gen import code_range, image_gen_config, image_gen_sample
from tests.helpers import finetune_golden as fg


@pytest.fixture(scope="module")
def ref():
    return fg.task("image_gen")


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir):
    from ofa_ds.data.vocab import Vocabulary

    return Vocabulary.from_dir(ofa_bpe_dir)


@functools.lru_cache(maxsize=1)
def golden_256():
    """The golden model with OFA's image_gen code grid (code_image_size 256: 32 x 32 codes)."""
    from ofa_ds.model.ofa import OFAModel

    path = fg.GOLDEN_MODEL
    return OFAModel.from_pretrained(path, config_overrides={**fg.NO_DROPOUT, "code_image_size": 256}).eval()


@pytest.fixture(scope="module")
def batches(ref, vocab):
    out = {}
    for split, name in (("train", "train"), ("valid", "dev")):
        tsv = TSVFile(fg.data_file(f"image_gen_{name}.tsv"), selected_cols="0,2,1")
        samples = [image_gen_sample(vocab, tsv.row(i), path=str(tsv.path), row=i, num_codes=1024)
                   for i in range(len(tsv))]
        for s, want in zip(samples, ref["samples"][split]):
            assert s.id == want["id"] and s.source.tolist() == want["source"]
            assert s.code_mask is True and want["code_mask"] == [True]
        batch = collate_task(samples, pad=vocab.pad, vocab_size=len(vocab))
        want = ref["batches"][split]
        assert batch["net_input"]["patch_images"] is None
        for k, v in fg.net_input(want).items():
            assert torch.equal(batch["net_input"][k], v), k
        assert batch["target"].tolist() == want["fields"]["target"]["value"]
        out[split] = batch
    return out


def test_code_range_criterion_matches_ofa(ref, batches, vocab, one_torch_thread):
    assert code_range(vocab) == (50265, 58457)
    b = batches["valid"]
    with torch.no_grad():
        logits, _ = golden_256()(**b["net_input"])
    out = label_smoothed_cross_entropy(logits, b["target"], None, options=LossOptions(constraint_range=(50265, 58457)))
    want = ref["criterion"]["valid_batch"]
    assert out.ntokens == want["sample_size"] and float(out.loss) == pytest.approx(want["loss"], rel=5e-5)


def test_first_sampling_step_distribution(ref, batches, vocab):
    """Step 0 of OFA's sampling search (gen_code, code range before log_softmax, ids 0-3
    banned): the top-256 tokens and their log-probs."""
    model = golden_256()
    b = batches["valid"]["net_input"]
    gen = SequenceGenerator(model, image_gen_config(vocab, 1024, beam=24))
    with torch.no_grad():
        enc = model.encoder(b["src_tokens"], b["src_lengths"])
        live = gen._start(enc, 1, None, None, enc["encoder_out"].device)
        lprobs = gen._next_log_probs(live, 0, gen.max_len(b["src_tokens"].shape[1]))[0]
    want = ref["step0_distribution"]
    assert int(lprobs.isfinite().sum()) == want["n_finite"] == 8192
    top = lprobs.topk(256)
    assert top.indices.tolist() == want["top256_tokens"]
    torch.testing.assert_close(top.values, torch.tensor(want["top256_lprobs"]), atol=1e-3, rtol=0)


def test_sampling_gives_exactly_n_codes(vocab):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.ofa import OFAModel

    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=len(vocab), code_image_size=32)).eval()
    src = vocab.encode_line(" what is the complete image? caption: a red bus")[None]
    gen = SequenceGenerator(model, image_gen_config(vocab, 16, beam=3), rng=torch.Generator().manual_seed(1))
    hyps = gen.generate(src, src.ne(vocab.pad).sum(1))[0]
    assert len(hyps) == 3
    for h in hyps:
        codes = h["tokens"][:-1]
        assert h["tokens"][-1] == vocab.eos and len(codes) == 16
        assert bool(((codes >= 50265) & (codes < 58457)).all())
