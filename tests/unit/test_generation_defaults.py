"""Generation at a user's pace: OFA's per-task settings by default (not a 200-token cap),
flags override one setting each, a progress bar on long searches."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.generate import parse_args, search_config
from ofa_ds.generation import SequenceGenerator, generate, task_generation_config
from ofa_ds.generation.presets import TASK_GENERATION


@pytest.fixture(scope="module")
def model():
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.ofa import OFAModel

    torch.manual_seed(0)
    return OFAModel(get_flavor("test", vocab_size=600)).eval()


def _inputs(n=2):
    src = torch.tensor([[0, 5, 6, 7, 2]] * n)
    return src, src.ne(1).sum(1), torch.randn(n, 3, 32, 32), torch.ones(n, dtype=torch.bool)


def test_defaults_are_the_task_settings(model, one_torch_thread):
    gen = SequenceGenerator(model)
    assert (gen.cfg.beam, gen.cfg.max_len_b, gen.cfg.no_repeat_ngram_size) == (5, 16, 3)
    g = SequenceGenerator(model, task="gigaword").cfg
    assert (g.beam, g.lenpen, g.max_len_b) == (6, 0.7, 32)
    r = SequenceGenerator(model, task="refcocog").cfg
    assert (r.min_len, r.max_len_b) == (4, 4)
    src, lengths, images, masks = _inputs()
    hyps = generate(model, src, lengths, patch_images=images, patch_masks=masks)
    assert all(len(h[0]["tokens"]) <= 17 for h in hyps)  # 16 tokens + eos, not 200
    with pytest.raises(ValueError, match="no generation settings"):
        task_generation_config("nope")
    assert set(TASK_GENERATION) >= {"caption", "refcoco", "gigaword", "vqa_gen", "image_gen"}


def test_image_gen_code_range_follows_the_vocabulary():
    class V:
        code_offset, code_dict_size = 1000, 64

    cfg = task_generation_config("image_gen", V(), max_len_b=16, min_len=16)
    assert cfg.constraint_range == (1000, 1064) and cfg.sampling and cfg.gen_code
    assert task_generation_config("image_gen").constraint_range == (50265, 58457)


def test_cli_flags_override_one_setting_each():
    args = parse_args(["--checkpoint", "x", "--vocab", "v", "--task", "gigaword", "--beam", "3"])
    cfg = search_config(args)
    assert (cfg.beam, cfg.lenpen, cfg.max_len_b, cfg.no_repeat_ngram_size) == (3, 0.7, 32, 3)
    assert search_config(parse_args(["--checkpoint", "x", "--vocab", "v"])).max_len_b == 16


def test_progress_bar_on_long_searches(model, capsys, one_torch_thread):
    src, lengths, images, masks = _inputs(1)
    SequenceGenerator(model, beam=2, max_len_b=8).generate(src, lengths, patch_images=images, patch_masks=masks)
    assert "decoding" not in capsys.readouterr().err
    SequenceGenerator(model, beam=2, max_len_b=8, progress=True).generate(src, lengths, patch_images=images,
                                                                          patch_masks=masks)
    assert "decoding" in capsys.readouterr().err
