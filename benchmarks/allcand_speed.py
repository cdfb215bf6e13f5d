"""All-candidate VQA scoring: candidates scored per second, the trie scorer vs one decoder
pass per candidate, in the same run (issue: make allcand cheap).

    python benchmarks/allcand_speed.py --flavor tiny --candidates 3129 --images 2 --rounds 2

The model is randomly initialised (speed does not depend on the weights); the answers are
3,129 synthetic 1-3 word answers over the GPT-2 BPE (VQA's candidate count; answer lengths
and shared prefixes like VQA's). Three scorers, A/B interleaved per round, medians reported:

* naive: one full decoder pass over [prompt ; answer] per candidate (encoder once per image);
* ofa20: OFA's valid_step, 20 candidates per pass (its valid_batch_size);
* trie:  ``score_fast`` (prompt once per image, one batched step per trie depth).

The naive scorers are timed on the first ``--naive-candidates`` answers and reported as a
rate; the scores of all three agree (max |diff| printed).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_answers(vocab, n: int, seed: int = 0) -> list[str]:
    words = [w for w in (vocab.decode([i]).strip() for i in range(300, 6000)) if w.isalpha() and len(w) > 2]
    rng = np.random.default_rng(seed)
    answers, seen = [], set()
    while len(answers) < n:
        k = rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])
        head = words[int(rng.integers(0, 400))]  # a small head vocabulary -> shared prefixes
        a = " ".join([head] + [words[int(rng.integers(0, len(words)))] for _ in range(k - 1)])
        if a not in seen:
            seen.add(a)
            answers.append(a)
    return answers


def main(argv=None) -> int:
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel
    from ofa_ds.tasks.candidates import AnswerSet, score_fast, score_naive

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavor", default="tiny")
    p.add_argument("--bpe-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "ofa_bpe"))
    p.add_argument("--candidates", type=int, default=3129)
    p.add_argument("--naive-candidates", type=int, default=60)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    vocab = Vocabulary.from_dir(args.bpe_dir)
    device = torch.device(args.device)
    model = OFAModel(get_flavor(args.flavor, vocab_size=len(vocab))).to(device).eval()
    answers = AnswerSet(synthetic_answers(vocab, args.candidates), vocab)
    # The first candidates, scored under the full set's trie (the same constraint masks).
    subset = copy.copy(answers)
    subset.answers, subset.tokens = answers.answers[:args.naive_candidates], answers.tokens[:args.naive_candidates]
    src = vocab.encode_line(" what is the man holding in his hand? object: person hand cup").to(device)
    B = args.images
    images = torch.randn(B, 3, args.image_size, args.image_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with torch.no_grad():
        enc = model.encoder(src[None].expand(B, -1), torch.full((B,), len(src), device=device), patch_images=images,
                            patch_masks=torch.ones(B, dtype=torch.bool, device=device))
        prompts = [src[:-1]] * B
        rates = {"naive": [], "ofa20": [], "trie": []}
        runs = {"naive": lambda: score_naive(model, enc, prompts, subset, chunk=1),
                "ofa20": lambda: score_naive(model, enc, prompts, subset, chunk=20),
                "trie": lambda: score_fast(model, enc, prompts, answers)}
        n_scored = {"naive": B * len(subset), "ofa20": B * len(subset), "trie": B * len(answers)}
        runs["trie"]()  # warm-up (builds the trie tables)
        outs = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                outs[name] = fn()
                sync()
                rates[name].append(n_scored[name] / (time.perf_counter() - t0))
    k = len(subset)
    diff = max(float((outs["trie"][:, :k] - outs["naive"]).abs().max()),
               float((outs["ofa20"] - outs["naive"]).abs().max()))
    med = {n: statistics.median(r) for n, r in rates.items()}
    tree = answers.tree()
    result = {"device": str(device), "flavor": args.flavor, "images": B, "image_size": args.image_size,
              "candidates": len(answers), "trie_nodes": len(tree["parent"]), "prompt_len": len(src) - 1,
              "candidates_per_s": med, "speedup_vs_naive": med["trie"] / med["naive"],
              "speedup_vs_ofa20": med["trie"] / med["ofa20"], "max_abs_score_diff": diff,
              "rounds": args.rounds, "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
