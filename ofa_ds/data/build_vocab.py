"""``ofa-ds build-vocab CORPUS DIR``: train a byte-level BPE and write it in OFA's layout.

The output directory holds the same three files as OFA's ``utils/BPE``:

* ``encoder.json``: BPE token -> BPE id (GPT-2 byte-level spelling, e.g. ``"Ġthe"``);
* ``vocab.bpe``: the merges, one ``"a b"`` per line after a ``#version`` header;
* ``dict.txt``: ``"<bpe id> <count>"`` per line, most frequent first, every BPE id listed.

so ``Vocabulary.from_dir(DIR)`` reads it through the same code path as OFA's own files. The
corpus is plain text, one document per line; like OFA's data every line is used with a leading
space (spec §1.3), so words at a line start get the same ``Ġword`` tokens as mid-sentence ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

MIN_VOCAB_SIZE = 256  # the byte alphabet: every text must stay encodable without <unk>


def _lines(corpus: Path) -> Iterator[str]:
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield " " + line


def train_bpe(corpus, vocab_size: int = 2000, min_frequency: int = 2) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE (no prefix space, GPT-2 regex) on ``corpus``."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (the byte alphabet), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],  # fairseq's specials live in the dictionary, not in the BPE
        show_progress=False,
    )
    tok.train_from_iterator(_lines(Path(corpus)), trainer=trainer)
    return tok


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    # tokenizers serializes merges as ["a", "b"] pairs (>= 0.20) or "a b" strings (older).
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def token_counts(tok: Tokenizer, corpus) -> np.ndarray:
    """Corpus count of every BPE id, as encoded with the leading-space convention."""
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for line in _lines(Path(corpus)):
        counts += np.bincount(tok.encode(line).ids, minlength=len(counts))
    return counts


def write_vocab_dir(out_dir, tok: Tokenizer, counts: Sequence[int]) -> None:
    """Write ``encoder.json``, ``vocab.bpe`` and ``dict.txt`` (ids by descending count, ties by id)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    with open(out / "encoder.json", "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(out / "vocab.bpe", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in _merges(tok))
    order = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))
    with open(out / "dict.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{i} {int(counts[i])}\n" for i in order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ofa-ds build-vocab",
        description="Train a byte-level BPE on a text corpus (one document per line) and write "
                    "it in OFA's layout: encoder.json, vocab.bpe, dict.txt.",
    )
    parser.add_argument("corpus", type=Path, help="UTF-8 text file, one document per line")
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=2000,
                        help="BPE vocabulary size including the 256 byte tokens (default 2000)")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="minimum pair count for a merge (default 2)")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        parser.error(f"corpus {args.corpus} is not a file")

    try:
        tok = train_bpe(args.corpus, args.vocab_size, args.min_frequency)
    except ValueError as e:
        parser.error(str(e))
    write_vocab_dir(args.out_dir, tok, token_counts(tok, args.corpus))
    print(f"wrote a {tok.get_vocab_size()}-token BPE to {args.out_dir} "
          "(dictionary = 4 specials + BPE + <mask> + codes + bins)")
    return 0
