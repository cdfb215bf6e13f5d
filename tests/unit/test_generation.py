"""Sequence generator: the golden OFA runs token for token, plus the search rules on a small
random model (spec ofa_data_and_tasks.md §7)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ofa_ds.config.flavors import get_flavor
from ofa_ds.generation import GenerationConfig, SequenceGenerator, Trie
from ofa_ds.generation.constraints import block_repeated_ngrams
from ofa_ds.model.ofa import OFAModel

CODE_RANGE = (50265, 58457)  # <code_0> .. <code_8191>
EOS = 2


# Decoding steps are tiny ops: one intra-op thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- golden: OFA's SequenceGenerator on batch A --------------------------------------------
@pytest.fixture(scope="module")
def golden(golden_dir):
    model = OFAModel.from_pretrained(golden_dir / "ofa_tiny_golden.pt").eval()
    inputs = np.load(golden_dir / "inputs.npz")
    net_input = {k: torch.from_numpy(inputs[f"A.{k}"])
                 for k in ("src_tokens", "src_lengths", "patch_images", "patch_masks")}
    with torch.no_grad():
        encoder_out = model.encoder(**net_input)
    meta = json.loads((golden_dir / "reference_meta.json").read_text())
    return model, net_input, encoder_out, meta


@pytest.mark.parametrize("run", ["A.greedy", "A.beam3", "A.beam3_no_repeat_ngram2"])
def test_matches_ofa_generator(golden, run):
    model, net_input, encoder_out, meta = golden
    settings = meta["generation_settings"][run]
    # "common": max_len_a 0, min_len 1, lenpen 1, unkpen 0, temperature 1, normalized scores.
    config = GenerationConfig(beam=settings["beam"], max_len_a=0, max_len_b=settings["max_len_b"],
                              min_len=1, lenpen=1.0, unk_penalty=0.0, temperature=1.0,
                              normalize_scores=True,
                              no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 0))
    out = SequenceGenerator(model, config).generate(net_input["src_tokens"], net_input["src_lengths"],
                                                    patch_images=net_input["patch_images"],
                                                    patch_masks=net_input["patch_masks"],
                                                    encoder_out=encoder_out)
    reference = meta["generation"][run]
    assert len(out) == len(reference)
    for hyps, ref_hyps in zip(out, reference):
        assert [h["tokens"].tolist() for h in hyps] == [r["tokens"] for r in ref_hyps]
        for h, r in zip(hyps, ref_hyps):
            assert h["score"] == pytest.approx(r["score"], abs=1e-4)
            torch.testing.assert_close(h["positional_scores"], torch.tensor(r["positional_scores"]),
                                       atol=1e-4, rtol=0)


# -- a small random model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test")).eval()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 1000, (3, 6), generator=g)
    src[:, 0], src[:, -1] = 0, EOS
    src[2, 4:] = 1
    net_input = {"src_tokens": src, "src_lengths": src.ne(1).sum(1),
                 "patch_images": torch.randn(3, 3, 64, 64, generator=g),
                 "patch_masks": torch.tensor([True, False, True])}
    with torch.no_grad():
        encoder_out = model.encoder(**net_input)
    return model, net_input, encoder_out


def run(model_and_input, rng=None, constraint_trie=None, allowed_tokens_fn=None, prefix_tokens=None,
        **config):
    model, net_input, encoder_out = model_and_input
    gen = SequenceGenerator(model, GenerationConfig(**config), constraint_trie=constraint_trie,
                            allowed_tokens_fn=allowed_tokens_fn, rng=rng)
    return gen.generate(net_input["src_tokens"], encoder_out=encoder_out, prefix_tokens=prefix_tokens)


class EosBoosted:
    """The model with +``boost`` on the eos logit, so that hypotheses want to stop early."""

    training = False

    def __init__(self, model, boost: float):
        self.inner, self.boost, self.config, self.encoder = model, boost, model.config, model.encoder

    def decoder(self, *args, **kwargs):
        logits, extra = self.inner.decoder(*args, **kwargs)
        logits[..., EOS] += self.boost
        return logits, extra


def teacher_forced_log_probs(small, sentence: int, tokens: torch.Tensor) -> torch.Tensor:
    """Full-softmax log-prob of each token of a hypothesis, from one full decoder pass."""
    model, _, encoder_out = small
    enc = {k: v[sentence:sentence + 1] for k, v in encoder_out.items()}
    prev = torch.cat([torch.zeros(1, dtype=torch.long), tokens[:-1]])[None]
    with torch.no_grad():
        logits, _ = model.decoder(prev, enc)
    return F.log_softmax(logits[0].float(), -1).gather(1, tokens[:, None]).squeeze(1)


def test_hypotheses_are_sorted_and_rescore_exactly(small):
    """Positional scores equal a teacher-forced full pass: exercises the cache reordering."""
    out = run(small, beam=3, max_len_b=5, no_repeat_ngram_size=2)
    for s, hyps in enumerate(out):
        assert len(hyps) == 3
        assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
        for h in hyps:
            assert h["tokens"][-1] == EOS and len(h["tokens"]) == len(h["positional_scores"])
            assert h["score"] == pytest.approx(float(h["positional_scores"].mean()), abs=1e-5)
            rescored = teacher_forced_log_probs(small, s, h["tokens"])
            torch.testing.assert_close(h["positional_scores"], rescored, atol=1e-4, rtol=0)
            toks = [0] + h["tokens"].tolist()
            bigrams = list(zip(toks, toks[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_gen_code_produces_only_codes_until_max_len(small):
    _, net_input, _ = small
    out = run(small, beam=2, max_len_a=0.5, max_len_b=2, gen_code=True, constraint_range=CODE_RANGE)
    max_len = int(0.5 * net_input["src_tokens"].shape[1]) + 2
    for hyps in out:
        for h in hyps:
            codes = h["tokens"][:-1]
            assert h["tokens"][-1] == EOS and len(codes) == max_len
            assert ((codes >= CODE_RANGE[0]) & (codes < CODE_RANGE[1])).all()


def test_constraint_range_keeps_special_ids(small):
    allowed = {0, 2, 3, 50265, 50266}  # ids 0-3 survive a range; pad (1) is never chosen
    out = run(small, beam=4, max_len_b=4, constraint_range=(50265, 50267))
    assert all(set(h["tokens"].tolist()) <= allowed for hyps in out for h in hyps)


@pytest.mark.parametrize("min_len", [1, 3])
def test_min_len(small, min_len):
    model, net_input, encoder_out = small
    out = run((EosBoosted(model, 30.0), net_input, encoder_out), beam=2, max_len_b=6, min_len=min_len)
    # eos is banned below min_len and overwhelmingly likely from then on.
    assert all(len(h["tokens"]) == min_len + 1 for hyps in out for h in hyps)


def test_finished_sentences_leave_the_batch(small):
    """Sentence 0 may only emit eos after two tokens, so it finishes while the others go on;
    every sentence must come out exactly as when generated alone."""
    model, net_input, encoder_out = small

    def allowed(sentence, tokens):
        return [EOS] if sentence == 0 and len(tokens) > 2 else range(4, 2000)

    batched = run(small, beam=2, max_len_b=5, allowed_tokens_fn=allowed)
    assert all(len(h["tokens"]) == 3 for h in batched[0])
    assert all(len(h["tokens"]) == 6 for h in batched[1])
    for s in range(3):
        one = {k: v[s:s + 1] for k, v in net_input.items()}
        enc = {k: v[s:s + 1] for k, v in encoder_out.items()}
        alone = run((model, one, enc), beam=2, max_len_b=5,
                    allowed_tokens_fn=lambda _, tokens: allowed(s, tokens))[0]
        assert [h["tokens"].tolist() for h in alone] == [h["tokens"].tolist() for h in batched[s]]
        for a, b in zip(alone, batched[s]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_trie_with_forced_prefix(small):
    """VQA style: the question is forced as a prefix, then only trie answers are possible."""
    answers = [[100], [200, 300], [200]]
    trie = Trie([[0, *a, EOS] for a in answers], eos=EOS)
    prefix = torch.tensor([[11, 12, 13], [21, 22, 1], [31, 1, 1]])
    out = run(small, beam=3, max_len_b=8, constraint_trie=trie, prefix_tokens=prefix)
    for hyps, pre in zip(out, prefix.tolist()):
        pre = [t for t in pre if t != 1]
        got = [h["tokens"].tolist() for h in hyps]
        assert all(g[:len(pre)] == pre and g[-1] == EOS for g in got)
        assert sorted(g[len(pre):-1] for g in got) == sorted(answers)


def test_trie_next():
    trie = Trie([[0, 5, 6, 2], [0, 5, 2], [0, 7, 2]], eos=2)
    assert sorted(trie.next([0])) == [5, 7]
    assert sorted(trie.next([0, 5])) == [2, 6]
    assert trie.next([0, 9]) == [2]  # off the tree: only eos


def test_sampling_topk(small):
    kwargs = dict(beam=3, max_len_b=4, sampling=True, sampling_topk=5)
    out = run(small, rng=torch.Generator().manual_seed(1), **kwargs)
    again = run(small, rng=torch.Generator().manual_seed(1), **kwargs)
    assert [[h["tokens"].tolist() for h in hyps] for hyps in out] == \
           [[h["tokens"].tolist() for h in hyps] for hyps in again]
    for s, hyps in enumerate(out):
        for h in hyps:
            # the recorded score is the full-softmax log-prob, not the renormalised top-k one
            full = teacher_forced_log_probs(small, s, h["tokens"])
            torch.testing.assert_close(h["positional_scores"], full, atol=1e-4, rtol=0)


def test_sampling_tiny_topp_is_greedy(small):
    greedy = run(small, beam=1, max_len_b=4)
    sampled = run(small, rng=torch.Generator().manual_seed(0), beam=2, max_len_b=4,
                  sampling=True, sampling_topp=1e-6)
    for g, s in zip(greedy, sampled):
        assert all(h["tokens"].tolist() == g[0]["tokens"].tolist() for h in s)


def test_block_repeated_ngrams():
    scores = torch.zeros(2, 10)
    tokens = torch.tensor([[0, 5, 6, 5], [0, 5, 6, 7]])
    block_repeated_ngrams(scores, tokens, 2)
    assert scores[0].isinf().nonzero().flatten().tolist() == [6]  # "5 6" seen, last token 5
    assert not scores[1].isinf().any()
    scores = torch.zeros(1, 10)
    block_repeated_ngrams(scores, torch.tensor([[0, 5, 6, 5, 6]]), 3)
    assert scores[0].isinf().nonzero().flatten().tolist() == [5]


def test_generate_cli(small, ofa_bpe_dir, tmp_path, capsys):
    from PIL import Image

    from ofa_ds.generate import main

    model = small[0]
    model.save_pretrained(tmp_path / "ckpt")
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    argv = ["--checkpoint", str(tmp_path / "ckpt"), "--vocab", str(ofa_bpe_dir),
            "--image", str(tmp_path / "image.png"), "--patch-image-size", "64",
            "--beam", "2", "--max-len-b", "3", "--nbest", "2", "--device", "cpu"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # "score<TAB>text", best first
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores[0] >= scores[1]
