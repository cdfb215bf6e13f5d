"""CLIP-SCST (text-to-image stage 2) with a small random CLIP and a random VQ-GAN: sampled
codes -> images -> CLIP rewards with the leave-one-out baseline -> a finite policy loss."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny_clip(tmp_path):
    from ofa_ds.tasks.image_gen_clip_scst import ClipScorer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for t in letters + [c + "</w>" for c in letters]:
        vocab[t] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    return ClipScorer(transformers.CLIPModel(cfg), tok, 32, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28])


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
