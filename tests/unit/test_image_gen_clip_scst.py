"""CLIP-SCST (text-to-image stage 2) with a small random CLIP and a random VQ-GAN: sampled
codes -> images -> CLIP rewards with the leave-one-out baseline -> a finite policy loss."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers.images import tiny_clip  # noqa: E402


def test_clip_scst_step(sample_data, tmp_path, one_torch_thread):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.config.load import load_config
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel
    from ofa_ds.tasks import build_task
    from ofa_ds.tasks.image_gen import image_gen_sample
    from ofa_ds.vqgan import VQGAN

    vocab = Vocabulary.from_dir(sample_data / "vocab")
    cfg = load_config(None, ["task.name=image_gen_clip_scst", f"data.root={sample_data}", "data.code_image_size=32",
                             "task.options.scst_samples=3", f"train.out_dir={tmp_path}"])
    torch.manual_seed(0)
    task = type(build_task(cfg, vocab))(cfg, vocab, clip_scorer=tiny_clip(tmp_path), vqgan=VQGAN.from_flavor("tiny"))
    samples = [image_gen_sample(vocab, [f"g{i}", caption, " ".join(str(7 * i + j) for j in range(16))],
                                path="x", row=i, num_codes=16)
               for i, caption in enumerate(["a red circle", "two blue squares"])]
    batch = task.collate(samples)
    model = OFAModel(get_flavor("test", vocab_size=len(vocab), code_image_size=32))
    model.train()
    ready = task.prepare_step(model, batch)
    assert model.training  # restored after sampling
    s = ready["scst"]
    assert s["target"].shape == (6, 17) and ready["ntokens"] == 6 * 17
    codes = s["target"][:, :-1]
    assert bool(((codes >= vocab.code_offset) & (codes < vocab.code_offset + vocab.code_dict_size)).all())
    assert torch.allclose(s["reward"].view(2, 3).sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert s["reward"].abs().sum() > 0  # CLIP tells the samples apart
    loss, report = task.training_forward(model, ready, denominators=[ready["ntokens"]], update_num=0)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.decoder.output_projection.weight.grad.abs().sum() > 0
