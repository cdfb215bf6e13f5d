"""The mixed sampler and loader: OFA's composition, sharding, exact resume, bad rows (spec §3.8)."""
from __future__ import annotations

import base64
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.mixture import DEFAULT_WEIGHTS, MixturePlan, extras_per_batch
from ofa_ds.data.pretrain import build_pretrain_loader
from ofa_ds.data.vocab import Vocabulary
from preprocessing.make_sample_data import pretrain_config, write_sample_data

VL_ROWS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root, vl_rows=VL_ROWS, text_rows=12, image_rows=6, detection_rows=6, finetune_rows=4,
                      code_image_size=16, vocab_size=300)
    return root, Vocabulary.from_dir(root / "vocab")


def make_loader(data, *, rank=0, world_size=1, num_workers=0, batch=8, **cfg):
    root, vocab = data
    config = pretrain_config(root, patch_image_size=32, code_image_size=16, **cfg)
    return build_pretrain_loader(config, vocab, rank=rank, world_size=world_size, seed=3,
                                 micro_batch_vl_rows=batch, num_workers=num_workers)


def structure(vl, extras) -> tuple:
    """What decides which modules a step runs: groups, image sizes, masks, code flags."""
    return (tuple(vl["net_input"]["patch_images"].shape[1:]), vl["net_input"]["code_masks"] is None,
            "sample_patch_num" in vl["net_input"], tuple(extras["net_input"]["patch_images"].shape),
            tuple(extras["net_input"]["patch_masks"].tolist()), tuple(extras["net_input"]["code_masks"].tolist()))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (vl_a, ex_a), (vl_b, ex_b) in zip(a, b):
        for x, y in ((vl_a, vl_b), (ex_a, ex_b)):
            assert list(x["id"]) == list(y["id"])
            for key in ("src_tokens", "prev_output_tokens", "patch_images", "patch_masks"):
                assert torch.equal(x["net_input"][key], y["net_input"][key]), key
            assert torch.equal(x["target"], y["target"]) and torch.equal(x["conf"], y["conf"])


# ---------------------------------------------------------------------------------------------
# Composition


def test_default_weights_give_ofas_composition():
    # per 8 VL rows (16 samples): 2 text, 1 image, 1 detection
    assert extras_per_batch(DEFAULT_WEIGHTS, 8) == {"text": 2, "image": 1, "detection": 1}
    assert extras_per_batch(DEFAULT_WEIGHTS, 32) == {"text": 8, "image": 4, "detection": 4}
    assert extras_per_batch({"vision_language": 1, "text": 0}, 8) == {}


@pytest.mark.parametrize("weights, rows, match", [
    (DEFAULT_WEIGHTS, 12, "multiple of 8"),
    (DEFAULT_WEIGHTS, 0, "multiple of 8"),
    ({"vision_language": 16, "text": 1.5}, 8, "whole numbers"),
    ({"text": 1}, 8, "must be > 0"),
    ({"vision_language": 1, "audio": 1}, 8, "unknown streams"),
])
def test_bad_mixture_settings_raise(weights, rows, match):
    with pytest.raises(ValueError, match=match):
        extras_per_batch(weights, rows)


def test_loader_batches_have_ofas_composition(data):
    loader = make_loader(data)
    assert len(loader) == VL_ROWS // 8
    for vl, extras in loader:
        assert vl["nsentences"] == 16 and len(set(vl["id"])) == 8
        assert Counter(i.rstrip("0123456789") for i in extras["id"]) == {"text": 2, "img": 1, "det": 1}


def test_plan_is_a_pure_function_of_its_inputs():
    kw = dict(vl_rows_per_batch=8, seed=5, rank=1, world_size=3)
    a, b = MixturePlan({"vision_language": 50, "text": 7, "image": 3, "detection": 4}, **kw), \
        MixturePlan({"vision_language": 50, "text": 7, "image": 3, "detection": 4}, **kw)
    for epoch, index in ((2, 1), (1, 0), (3, 2), (1, 1)):
        assert a.batch(epoch, index) == b.batch(epoch, index)
    assert a.batch(1, 0) != a.batch(2, 0)  # reshuffled per epoch
    # the extra streams cycle: over 7 consecutive events every text row is read once
    events = [e for i in range(3) for name, e in a.batch(1, i).extras if name == "text"]
    assert all(e % 3 == 1 for e in events)  # this rank's lane of the global event order


# ---------------------------------------------------------------------------------------------
# Sharding: every VL row exactly once per epoch, same structure everywhere


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_every_vl_row_once_per_epoch_on_any_layout(data, num_workers):
    for world_size in (1, 2, 3, 4):
        seen: Counter = Counter()
        shapes = set()
        lengths = set()
        for rank in range(world_size):
            loader = make_loader(data, rank=rank, world_size=world_size, num_workers=num_workers)
            batches = list(loader)
            lengths.add((len(loader), len(batches)))
            for vl, extras in batches:
                seen.update(i for i in vl["id"] if i != "<placeholder>")
                shapes.add(structure(vl, extras))
        assert seen == {f"vl{i}": 2 for i in range(VL_ROWS)}, (world_size, num_workers)
        assert len(lengths) == 1 and len({n for pair in lengths for n in pair}) == 1  # same step count
        assert len(shapes) == 1, shapes  # every micro-batch on every rank runs the same modules


def test_empty_vl_group_gets_a_zero_weight_placeholder(data, tmp_path):
    root, vocab = data
    vl = Path(root) / "pretrain" / "vision_language_examples.tsv"
    short = tmp_path / "vl17.tsv"
    short.write_text("".join(vl.read_text().splitlines(keepends=True)[:17]))
    # 17 rows on 2 ranks: 9 + 8, so rank 1's second micro-batch has no VL row at all
    config = pretrain_config(root, patch_image_size=32, code_image_size=16)
    config.vision_language = str(short)
    loader = build_pretrain_loader(config, vocab, rank=1, world_size=2, seed=3, micro_batch_vl_rows=8)
    (_, _), (vl_batch, extras) = list(loader)
    assert list(vl_batch["id"]) == ["<placeholder>"] and vl_batch["conf"].tolist() == [0.0]
    assert vl_batch["net_input"]["patch_images"].shape == (1, 3, 32, 32) and extras["nsentences"] == 4


# ---------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("workers_before, workers_after", [(0, 2), (2, 1), (1, 0)])
def test_resume_mid_epoch_yields_the_identical_remaining_batches(data, workers_before, workers_after):
    reference = make_loader(data, world_size=2, rank=1)
    expected = list(reference) + list(reference)  # two epochs
    assert reference.epoch == 3

    first = make_loader(data, world_size=2, rank=1, num_workers=workers_before)
    it = iter(first)
    taken = [next(it) for _ in range(2)]
    state = first.state_dict()
    del it

    resumed = make_loader(data, world_size=2, rank=1, num_workers=workers_after)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert resumed.epoch == 2
    rest += list(resumed)
    assert_same_batches(taken + rest, expected)


def test_resume_on_another_world_size_restarts_at_the_rows_already_read(data, caplog):
    one = make_loader(data)
    it = iter(one)
    next(it), next(it)  # 16 of the epoch's rows read
    state = one.state_dict()
    two = make_loader(data, rank=1, world_size=2)
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
        two.load_state_dict(state)
    assert (two.epoch, two.batch_index) == (1, 1) and "restarting at micro-batch 1" in caplog.text


def test_resume_refuses_different_data(data):
    loader = make_loader(data)
    state = loader.state_dict()
    state["num_rows"] = {**state["num_rows"], "vision_language": 41}
    with pytest.raises(ValueError, match="num_rows"):
        make_loader(data).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Bad rows


def _bad_vl_file(root: Path, out: Path) -> dict[int, str]:
    """16 VL rows, 7 of them broken in different ways; returns row -> expected reason."""
    rows = [line.split("\t") for line in (root / "pretrain" / "vision_language_examples.tsv").read_text().splitlines()]
    good = [r for r in rows if r[7] == "caption"][:16]
    vg = next(r for r in rows if r[7] == "visual_grounding")
    bad = {
        1: ("invalid base64", good[1][:1] + ["abcde"] + good[1][2:]),
        2: ("wrong column count", good[2][:7]),
        3: ("box outside image", vg[:4] + ["0,0,5000,10"] + vg[5:]),
        4: ("empty text", good[4][:2] + ["..."] + good[4][3:]),
        5: ("undecodable image", good[5][:1] + [base64.b64encode(b"not an image").decode()] + good[5][2:]),
        6: ("unknown type", good[6][:7] + ["ocr"]),
        7: ("bad answer", good[7][:3] + ["what is it?", "yes"] + good[7][5:7] + ["qa"]),
    }
    for i, (_, row) in bad.items():
        good[i] = row
    out.write_text("".join("\t".join(r) + "\n" for r in good))
    return {i: reason for i, (reason, _) in bad.items()}


def test_each_bad_row_is_skipped_counted_and_named(data, tmp_path, caplog):
    root, _ = data
    expected = _bad_vl_file(Path(root), tmp_path / "vl.tsv")
    text = tmp_path / "text.tsv"
    text.write_text("t0\thello there\nt1\t   \nt2\tgood text\n")
    for workers in (0, 2):
        loader = make_loader(data, num_workers=workers, vision_language=str(tmp_path / "vl.tsv"), text=str(text))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
            batches = list(loader)
        counts = loader.policy.summary(1)
        assert counts[str(tmp_path / "vl.tsv")] == Counter(expected.values())
        assert counts[str(text)] == {"empty text": 1}
        # the VL rows of bad rows are gone, everything else is there; extras groups stay full
        seen = Counter(i for vl, _ in batches for i in vl["id"])
        assert sum(seen.values()) == 2 * (16 - len(expected))
        assert all(ex["nsentences"] == 4 for _, ex in batches)
        log = caplog.text
        for row, reason in expected.items():
            assert f"row {row}" in log and reason in log
        assert "epoch 1: skipped 8 bad rows" in log


def test_strict_mode_fails_on_the_first_bad_row(data, tmp_path):
    root, _ = data
    _bad_vl_file(Path(root), tmp_path / "vl.tsv")
    for workers in (0, 1):
        loader = make_loader(data, num_workers=workers, vision_language=str(tmp_path / "vl.tsv"), strict=True)
        with pytest.raises(BadRow, match="row 1"):
            list(loader)
