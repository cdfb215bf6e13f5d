"""Batch format of spec §2.4 / §3.8: keys, dtypes, shapes, padding, placeholder images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ofa_ds.data.collate import collate
from ofa_ds.data.pretrain import build_pretrain_loader
from ofa_ds.data.streams import Sample
from ofa_ds.data.vocab import Vocabulary
from preprocessing.make_sample_data import pretrain_config, write_sample_data

NET_INPUT_KEYS = {"src_tokens", "src_lengths", "patch_images", "patch_masks", "code_masks", "prev_output_tokens"}
BATCH_KEYS = {"id", "nsentences", "ntokens", "net_input", "target", "conf"}


def _sample(sid, src, tgt, code_mask=None, size=8) -> Sample:
    return Sample(sid, torch.tensor([0, *src, 2]), torch.tensor([*tgt, 2]), torch.tensor([0, *tgt]),
                  torch.full((3, size, size), 0.5), True, code_mask, 1.0)


def test_collate_pads_right_with_one_and_counts_tokens():
    batch = collate([_sample("a", [5, 6, 7], [8]), _sample("b", [5], [8, 9, 10])])
    ni = batch["net_input"]
    assert ni["src_tokens"].tolist() == [[0, 5, 6, 7, 2], [0, 5, 2, 1, 1]]
    assert ni["src_lengths"].tolist() == [5, 3]
    assert batch["target"].tolist() == [[8, 2, 1, 1], [8, 9, 10, 2]]
    assert ni["prev_output_tokens"].tolist() == [[0, 8, 1, 1], [0, 8, 9, 10]]
    assert batch["ntokens"] == 6 and batch["nsentences"] == 2 and list(batch["id"]) == ["a", "b"]
    assert ni["code_masks"] is None and ni["patch_masks"].dtype == torch.bool
    assert batch["conf"].dtype == torch.float32
    coded = collate([_sample("a", [5], [8], code_mask=True), _sample("b", [5], [8], code_mask=False)])
    assert coded["net_input"]["code_masks"].tolist() == [True, False]


def test_collate_rejects_empty_and_mixed_sizes():
    with pytest.raises(ValueError):
        collate([])
    with pytest.raises(ValueError, match="image size"):
        collate([_sample("a", [5], [8], size=8), _sample("b", [5], [8], size=16)])


@pytest.fixture(scope="module")
def loader_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root, vl_rows=16, text_rows=8, image_rows=4, detection_rows=4, finetune_rows=4,
                      code_image_size=16, vocab_size=300)
    vocab = Vocabulary.from_dir(root / "vocab")
    cfg = pretrain_config(root, patch_image_size=48, code_image_size=16, sample_patch_num=196)
    loader = build_pretrain_loader(cfg, vocab, micro_batch_vl_rows=8)
    return vocab, next(iter(loader))


def test_pretraining_batch_matches_the_spec(loader_batch):
    vocab, (vl, extras) = loader_batch
    for batch, n, size in ((vl, 16, 48), (extras, 4, 32)):
        assert set(batch) == BATCH_KEYS
        ni = batch["net_input"]
        assert set(ni) - {"sample_patch_num"} == NET_INPUT_KEYS
        B, S = ni["src_tokens"].shape
        T = batch["target"].shape[1]
        assert B == n == batch["nsentences"] and isinstance(batch["id"], np.ndarray) and batch["id"].shape == (n,)
        assert ni["src_tokens"].dtype == ni["src_lengths"].dtype == torch.long
        assert ni["prev_output_tokens"].shape == (B, T) and ni["prev_output_tokens"].dtype == torch.long
        assert batch["target"].dtype == torch.long
        assert ni["patch_images"].shape == (B, 3, size, size) and ni["patch_images"].dtype == torch.float32
        assert ni["patch_masks"].shape == (B,) and ni["patch_masks"].dtype == torch.bool
        assert batch["conf"].shape == (B,) and batch["conf"].dtype == torch.float32
        assert ni["src_lengths"].tolist() == ni["src_tokens"].ne(1).sum(1).tolist()
        assert (ni["src_tokens"][:, 0] == vocab.bos).all()
        assert batch["ntokens"] == int(batch["target"].ne(1).sum())
        # target = [y ; eos], prev = [bos ; y]: shifted by one wherever both are real tokens
        prev, tgt = ni["prev_output_tokens"], batch["target"]
        both = prev[:, 1:].ne(1) & tgt[:, :-1].ne(1)
        assert torch.equal(prev[:, 1:][both], tgt[:, :-1][both]) and (prev[:, 0] == vocab.bos).all()
    assert vl["net_input"]["code_masks"] is None and vl["net_input"]["sample_patch_num"] == 196
    assert "sample_patch_num" not in extras["net_input"]
    assert extras["net_input"]["code_masks"].dtype == torch.bool
    assert extras["conf"].tolist() == [2.0] * 4


def test_text_only_samples_carry_zero_images_without_patch_masks(loader_batch):
    _, (vl, extras) = loader_batch
    ni = extras["net_input"]
    is_text = torch.tensor([i.startswith("text") for i in extras["id"]])
    assert is_text.sum() == 2
    assert (~ni["patch_masks"][is_text]).all() and ni["patch_masks"][~is_text].all()
    assert ni["patch_images"][is_text].abs().sum() == 0
    assert ni["code_masks"].tolist() == [i.startswith("img") for i in extras["id"]]
    assert vl["net_input"]["patch_masks"].all()
