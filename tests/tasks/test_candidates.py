"""The trie scorer gives OFA's all-candidate scores (the chunked full-pass scorer) on answers
that share prefixes, with prompts of different lengths."""
from __future__ import annotations

import torch

from ofa_ds.tasks.candidates import AnswerSet, score_fast, score_naive


def test_trie_scorer_equals_full_pass_scorer(sample_data, one_torch_thread):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel

    torch.manual_seed(0)
    vocab = Vocabulary.from_dir(sample_data / "vocab")
    model = OFAModel(get_flavor("test", vocab_size=len(vocab))).eval()
    answers = AnswerSet(["red", "red circle", "red square", "blue", "blue circle on the left", "yes", "no",
                         "top right", "top left", "top"], vocab)
    prompts = [vocab.encode_line(" what is it? object: circle")[:-1], vocab.encode_line(" where?")[:-1]]
    src = torch.nn.utils.rnn.pad_sequence([torch.cat([p, torch.tensor([vocab.eos])]) for p in prompts],
                                          batch_first=True, padding_value=vocab.pad)
    with torch.no_grad():
        enc = model.encoder(src, src.ne(vocab.pad).sum(1), patch_images=torch.randn(2, 3, 32, 32),
                            patch_masks=torch.ones(2, dtype=torch.bool))
    fast = score_fast(model, enc, prompts, answers)
    torch.testing.assert_close(fast, score_naive(model, enc, prompts, answers, chunk=3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, score_naive(model, enc, prompts, answers, chunk=1), atol=1e-5, rtol=1e-5)
    assert fast.shape == (2, len(answers)) and (fast < 0).all()
