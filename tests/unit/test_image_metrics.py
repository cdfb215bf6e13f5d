"""Text-to-image scores (spec §5.5): our Inception features and FID against pytorch-fid (the
reference implementation behind published FIDs), the Inception Score at its known extremes,
and the image_gen evaluation ranking samples by CLIP, decoding through the VQ-GAN and scoring
FID/IS — with a random CLIP, VQ-GAN and Inception (no downloads)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ofa_ds.tasks.image_metrics import (InceptionFeatures, feature_statistics, frechet_distance,
                                        inception_score)


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    net = InceptionFeatures()  # 1008 classes: the TF network's pooling
    state = net.net.state_dict()
    for k, v in state.items():  # non-trivial statistics, so every pooling choice shows
        if k.endswith("running_mean"):
            v.normal_(0, 0.1)
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
    net.net.load_state_dict(state)
    return net, state


def test_features_equal_pytorch_fid(inception, monkeypatch):
    pfid = pytest.importorskip("pytorch_fid.inception")
    net, state = inception
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = pfid.InceptionV3([pfid.InceptionV3.DEFAULT_BLOCK_INDEX], resize_input=True, normalize_input=True,
                              use_fid_inception=True).eval()
    x = torch.rand(2, 3, 48, 64)
    ours, logits = net(x)
    with torch.no_grad():
        want = theirs(x)[0].flatten(1)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=0)
    assert logits.shape == (2, 1008)
    net.tf_pooling = False  # torchvision's network: a different function of the same weights
    try:
        assert not torch.allclose(net(x)[0], want, rtol=1e-3)
    finally:
        net.tf_pooling = True


def test_checkpoint_round_trip(inception, tmp_path):
    net, state = inception
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1)}, tmp_path / "inception.pth")
    loaded = InceptionFeatures.from_checkpoint(tmp_path / "inception.pth")
    assert loaded.tf_pooling
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], net(x)[0], rtol=0, atol=0)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth.*fc.weight"):
        InceptionFeatures.from_checkpoint(tmp_path / "bad.pth")


def test_frechet_distance_equals_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 16)), rng.normal(0.3, 1.2, size=(80, 16)) @ rng.normal(size=(16, 16))
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    ours = frechet_distance(*stats_a, *stats_b)
    assert ours == pytest.approx(fid_score.calculate_frechet_distance(*stats_a, *stats_b), rel=1e-9)
    assert frechet_distance(*stats_a, *stats_a) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(a[:1])


def test_inception_score_extremes():
    # one class for every image: p(y|x) = p(y), IS = 1; N images of N distinct sure classes: N
    same = np.tile(np.array([[5.0, 0.0, 1.0, 2.0]]), (8, 1))
    assert inception_score(same, splits=2) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    sure = np.eye(6) * 80.0
    assert inception_score(sure, splits=1)[0] == pytest.approx(6.0, rel=1e-9)
    assert inception_score(sure, splits=2) == (pytest.approx(3.0, rel=1e-9), pytest.approx(0.0, abs=1e-9))


def test_image_gen_evaluation_ranks_by_clip_and_scores(sample_data, tmp_path, inception, one_torch_thread):
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.config.load import load_config
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel
    from ofa_ds.tasks.image_gen import ImageGenTask, caption_of
    from ofa_ds.vqgan import VQGAN
    from tests.helpers.images import tiny_clip

    vocab = Vocabulary.from_dir(sample_data / "vocab")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "gt_stats.npz", mu=rng.normal(size=2048), sigma=np.eye(2048) * 0.5)
    # 16 codes per image (a 32-px code grid) keeps the sampling short; columns id, codes, caption
    captions = ["a red circle on the left", "two blue squares", "a green triangle at the top"]
    rows = [f"g{i}\t{' '.join(str(int(c)) for c in rng.integers(0, 512, 16))}\t{c}" for i, c in enumerate(captions)]
    (tmp_path / "gen.tsv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, ["task.name=image_gen", f"data.root={sample_data}", "data.code_image_size=32",
                             f"task.valid={tmp_path / 'gen.tsv'}",
                             "task.options.samples=3", "task.options.decode_batch=2", "task.eval_batch=2",
                             f"task.options.fid_stats={tmp_path / 'gt_stats.npz'}", f"train.out_dir={tmp_path}"])
    torch.manual_seed(0)
    clip, vq = tiny_clip(tmp_path), VQGAN.from_flavor("tiny").eval()
    task = ImageGenTask(cfg, vocab, clip_scorer=clip, vqgan=vq, inception=inception[0])
    model = OFAModel(get_flavor("test", vocab_size=len(vocab), code_image_size=32)).eval()
    out = tmp_path / "eval" / "predictions.jsonl"
    metrics = task.evaluate(model, device=torch.device("cpu"), split="valid", max_rows=3, out_path=out)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert len(line["samples"]) == 3 and all(len(s) == 16 for s in line["samples"])
        assert line["clip_scores"] == sorted(line["clip_scores"], reverse=True)
    # the ranking is CLIP's: rescoring the best sample of each caption from scratch
    tsv = task.tsv("valid")
    for i, line in enumerate(lines):
        caption = caption_of(vocab, task.build_sample("valid", i).source)
        again = clip(vq.decode(torch.tensor([line["samples"][0]])), [caption])
        assert float(again) == pytest.approx(line["clip_scores"][0], abs=1e-6)
        assert tsv.row(i)[0] == line["id"]
    assert metrics["valid_clip_score"] == pytest.approx(np.mean([line["clip_scores"][0] for line in lines]))
    assert np.isfinite(metrics["valid_fid"]) and metrics["valid_fid"] > 0
    assert 1.0 <= metrics["valid_is_mean"] <= 3.0 and np.isfinite(metrics["valid_code_logprob"])
    # the top images, decoded by the VQ-GAN
    pngs = sorted((out.parent / "predictions_images").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(line["id"] for line in lines)
    from PIL import Image

    top = torch.from_numpy(np.asarray(Image.open(out.parent / "predictions_images" / f"{lines[0]['id']}.png")))
    want = (vq.decode(torch.tensor([lines[0]["samples"][0]]))[0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255)
    assert (top.float() - want.to(torch.uint8).float()).abs().max() <= 1


def test_image_scores_need_the_vqgan(sample_data, tmp_path):
    from ofa_ds.config.load import load_config
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.tasks.image_gen import ImageGenTask

    cfg = load_config(None, ["task.name=image_gen", f"data.root={sample_data}", "data.code_image_size=32",
                             "task.options.clip=clip_dir", f"train.out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="task.options.vqgan"):
        ImageGenTask(cfg, Vocabulary.from_dir(sample_data / "vocab"))
