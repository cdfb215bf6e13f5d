"""Encoding as OFA's own tokenizers do, checked against OFA's files (../shared/ofa_bpe, ofa_bpe_cn):
symbols inside dataset text are characters, BERT-CN keeps its specials whole and cleans up the
decoded string, and OFA-CN's text normaliser."""
from __future__ import annotations

import json

import pytest

from ofa_ds.data.vocab import Vocabulary


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir) -> Vocabulary:
    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture(scope="module")
def vocab_cn(shared) -> Vocabulary:
    return Vocabulary.from_dir(shared / "ofa_bpe_cn")


def ofa_ids(bpe_dir, pieces: list[str]) -> list[int]:
    """OFA's ids of GPT-2 pieces, from its own files: encoder.json gives the GPT-2 id, whose decimal
    string's line in dict.txt (after the 4 specials) is the index."""
    encoder = json.loads((bpe_dir / "encoder.json").read_text())
    lines = [l.rsplit(" ", 1)[0] for l in (bpe_dir / "dict.txt").read_text(encoding="utf-8").splitlines()]
    index = {sym: i + 4 for i, sym in reversed(list(enumerate(lines)))}
    return [index[str(encoder[p])] for p in pieces]


@pytest.mark.parametrize("text, pieces", [
    (" a <mask> b", ["Ġa", "Ġ<", "mask", ">", "Ġb"]),
    (" the <bin_12> box", ["Ġthe", "Ġ<", "bin", "_", "12", ">", "Ġbox"]),
    (" <code_5>", ["Ġ<", "code", "_", "5", ">"]),
])
def test_symbols_in_dataset_text_are_characters(vocab, ofa_bpe_dir, text, pieces):
    assert vocab.encode(text) == ofa_ids(ofa_bpe_dir, pieces)
    assert vocab.encode_line(text, add_bos=False, add_eos=False).tolist() == ofa_ids(ofa_bpe_dir, pieces)
    assert vocab.decode(vocab.encode_line(text)) == text  # the space before the symbol is kept
    # The named option for prompts still makes them single ids.
    assert len(vocab.encode(text, parse_symbols=True)) < len(pieces)


def test_stream_targets_encode_symbols_in_raw_text_as_characters(vocab, ofa_bpe_dir, tmp_path):
    """A pretraining stream (the callers of encode that see raw rows) gets OFA's encoding."""
    import numpy as np

    from ofa_ds.data.streams import TextInfillingStream
    from ofa_ds.data.tsv import TSVFile

    path = tmp_path / "text.tsv"
    path.write_text("t1\tfill the <mask> here\n")
    sample = TextInfillingStream(TSVFile(path), vocab).sample(0, np.random.default_rng(0))
    pieces = ["Ġfill", "Ġthe", "Ġ<", "mask", ">", "Ġhere"]
    assert sample.target.tolist() == [*ofa_ids(ofa_bpe_dir, pieces), vocab.eos]


def test_bert_cn_keeps_special_tokens_whole(vocab_cn, shared):
    v = vocab_cn
    # dict.txt is vocab.txt in order, so index = line + 4 (spec §1.6): [CLS] 105, [SEP] 106, [MASK] 107.
    lines = (shared / "ofa_bpe_cn" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    ids = {t: lines.index(t) + 4 for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "你", "好")}
    assert (ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]) == (105, 106, 107)
    assert v.encode("你好[MASK]") == [ids["你"], ids["好"], ids["[MASK]"]]
    assert v.encode("[CLS]你[SEP]好") == [ids["[CLS]"], ids["你"], ids["[SEP]"], ids["好"]]
    assert v.encode("[UNK] [PAD]") == [ids["[UNK]"], ids["[PAD]"]]
    # BertTokenizer matches its specials before lowercasing: a lower-case one is plain text.
    assert ids["[MASK]"] not in v.encode("[mask]")


@pytest.mark.parametrize("text, expected", [
    ("giraffe's neck", "giraffe's neck"),
    ("it isn't here , ok ?", "it isn't here, ok?"),
    ("你好 ， 世界 。", "你 好 ， 世 界 。"),
])
def test_bert_cn_decode_cleans_up_the_joined_string(vocab_cn, text, expected):
    assert vocab_cn.decode(vocab_cn.encode_line(text)) == expected


def test_pre_chinese_is_ofa_cns_normaliser():
    from ofa_ds.data.streams import pre_chinese

    assert pre_chinese("  两只 长颈鹿  在\n\n吃草。  ", 5) == "两只 长颈"  # characters, not words
    assert pre_chinese("ABC  Def\n") == "abc def"
    # Upstream's punctuation replace is inert; the named option does what it meant.
    assert pre_chinese("你好，世界！") == "你好，世界！"
    assert pre_chinese("你好，世界！", remove_punctuation=True) == "你好 世界"
