"""``ofa-ds build-vocab``: a trained BPE in OFA's 3-file layout that ``Vocabulary`` reads."""
from __future__ import annotations

import json

import pytest

from ofa_ds.cli import main as cli_main
from ofa_ds.data.build_vocab import main
from ofa_ds.data.vocab import Vocabulary

CORPUS = [
    "A man riding a horse on the beach.",
    "Two dogs play in the snow!",
    "a cat sits on the mat",
    "the quick brown fox jumps over the lazy dog",
    "what does the image describe?",
]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS * 30) + "\n\n", encoding="utf-8")
    return path


def test_build_vocab_writes_ofa_layout(corpus, tmp_path):
    out = tmp_path / "bpe"
    assert main([str(corpus), str(out), "--vocab-size", "400"]) == 0
    encoder = json.loads((out / "encoder.json").read_text(encoding="utf-8"))
    assert sorted(encoder.values()) == list(range(len(encoder)))
    assert 256 < len(encoder) <= 400
    merges = (out / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and all(len(m.split(" ")) == 2 for m in merges[1:])
    assert len(merges) - 1 == len(encoder) - 256  # one merge per token beyond the byte alphabet

    # dict.txt: every BPE id once, as a decimal string with its count, most frequent first.
    rows = [line.split(" ") for line in (out / "dict.txt").read_text().splitlines()]
    assert sorted(int(sym) for sym, _ in rows) == list(range(len(encoder)))
    counts = [int(c) for _, c in rows]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0

    vocab = Vocabulary.from_dir(out)
    assert vocab.kind == "gpt2"
    assert len(vocab) == 4 + len(encoder) + 1 + 8192 + 1000
    assert vocab.symbol(4) == rows[0][0]  # dict.txt line order is the id order
    # Learned merges: a frequent word is one token, with the leading-space (Ġ) convention.
    assert len(vocab.encode(" the")) == 1 and vocab.is_word_start()[vocab.encode(" the")[0]]
    for text in (" a man riding a horse", " unseen zebra naïve 你好 🙂", " cat <mask> on <bin_3>"):
        ids = vocab.encode_line(text)
        assert vocab.unk not in ids.tolist()
        assert vocab.decode(ids) == text  # dataset text: symbols are characters, spaces kept
        prompt = vocab.encode_line(text, parse_symbols=True)
        assert vocab.decode(prompt) == text.replace(" <", "<")  # parsed symbols swallow the space


def test_cli_dispatch_and_bad_vocab_size(corpus, tmp_path, capsys):
    assert cli_main(["build-vocab", str(corpus), str(tmp_path / "v"), "--vocab-size", "300"]) == 0
    assert (tmp_path / "v" / "dict.txt").is_file()
    with pytest.raises(SystemExit):
        main([str(corpus), str(tmp_path / "w"), "--vocab-size", "100"])
    assert "at least 256" in capsys.readouterr().err
