"""Small random image-scoring models for tests (no downloads)."""
from __future__ import annotations

import json

import torch


def tiny_clip(tmp_path):
    """A random one-layer CLIP with a letters-only tokenizer (files in ``tmp_path``)."""
    import transformers

    from ofa_ds.tasks.image_metrics import ClipScorer

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
