"""Vocabulary: OFA's dictionary layout and ids, checked against the spec and the golden fixture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ofa_ds.data.vocab import Vocabulary


@pytest.fixture(scope="module")
def vocab(ofa_bpe_dir) -> Vocabulary:
    return Vocabulary.from_dir(ofa_bpe_dir)


@pytest.fixture(scope="module")
def vocab_cn(shared) -> Vocabulary:
    return Vocabulary.from_dir(shared / "ofa_bpe_cn")


def _unpad(row) -> list[int]:
    return [int(t) for t in row if t != 1]


# ------------------------------------------------------------------------------- layout
def test_layout_and_special_ids(vocab):
    assert len(vocab) == 59457
    assert (vocab.bos, vocab.pad, vocab.eos, vocab.unk, vocab.mask) == (0, 1, 2, 3, 50264)
    assert [vocab.symbol(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert vocab.symbol(50264) == "<mask>"
    assert vocab.code_id(0) == vocab.code_offset == 50265
    assert vocab.code_id(8191) == 58456
    assert vocab.bin_id(0) == vocab.bin_offset == 58457
    assert vocab.bin_id(999) == 59456
    assert vocab.symbol(58457 + 12) == "<bin_12>" and vocab.index("<code_7>") == 50272
    # dict.txt order: GPT-2 id 13 (".") is the first line, so dict index 4 (spec §1.1).
    assert vocab.symbol(4) == "13" and vocab.index("13") == 4
    assert vocab.symbol(50263) == "madeupword0002"
    assert vocab.index("no such symbol") == vocab.unk
    for bad in (lambda: vocab.code_id(8192), lambda: vocab.bin_id(-1), lambda: vocab.bin_id(1000)):
        with pytest.raises(ValueError):
            bad()


def test_from_dir_rejects_incomplete_directory(tmp_path, ofa_bpe_dir):
    with pytest.raises(ValueError, match="dict.txt"):
        Vocabulary.from_dir(tmp_path)
    (tmp_path / "dict.txt").write_text((ofa_bpe_dir / "dict.txt").read_text())
    with pytest.raises(ValueError, match="encoder.json"):
        Vocabulary.from_dir(tmp_path)


# --------------------------------------------------------------------------- golden ids
# Texts from the golden fixture's README; ids stored by OFA's own Dictionary/GPT2BPE.
GOLDEN = {
    ("A", 0): (" what does the image describe?", " an astronaut in a white space suit"),
    ("A", 1): (" what are the objects in the image?", "<bin_123> <bin_45> <bin_678> <bin_901> cup"),
    ("B", 0): (' what is the complete text of " the cat <mask> on the mat "?', " the cat sat on the mat"),
    ("B", 1): (" what is the image in the middle part?",
               " ".join(f"<code_{k}>" for k in (17, 4095, 0, 8191, 512, 3000, 77, 6000))),
}


@pytest.mark.parametrize("batch,sample", sorted(GOLDEN))
def test_encode_matches_golden_inputs(vocab, golden_dir, batch, sample):
    inputs = np.load(golden_dir / "inputs.npz")
    src_text, tgt_text = GOLDEN[batch, sample]
    src = _unpad(inputs[f"{batch}.src_tokens"][sample])
    prev = _unpad(inputs[f"{batch}.prev_output_tokens"][sample])
    target = _unpad(inputs[f"{batch}.target"][sample])

    # OFA built these samples from ids (mask spans, bins, codes); as text they are prompts
    # whose symbols are meant.
    assert vocab.encode_line(src_text, parse_symbols=True).tolist() == src
    assert vocab.encode_line(tgt_text, add_eos=False, parse_symbols=True).tolist() == prev
    assert vocab.encode_line(tgt_text, add_bos=False, parse_symbols=True).tolist() == target


def test_spec_worked_example(vocab):
    # spec §9
    assert vocab.encode_line(" what does the image describe?").tolist() == [0, 99, 473, 5, 2274, 6190, 116, 2]
    assert vocab.encode_line(" a man riding a horse on the beach.", add_bos=False).tolist() == [
        10, 313, 5793, 10, 5253, 15, 5, 4105, 4, 2]
    assert vocab.bins_for_box((0.1, 0.2, 0.5, 0.9)) == [58557, 58657, 58957, 59356]
    # spec §1.3: single-token answers, and the double-space grounded-captioning prompt.
    answers = {" yes": 4420, " no": 117, " maybe": 2085, " positive": 1313, " negative": 2430}
    assert {text: vocab.encode(text) for text in answers} == {t: [i] for t, i in answers.items()}
    assert vocab.encode("  what does the region describe? region:")[:2] == [1437, 99]
    # spec §3.5: the text-infilling prompt is "Ġwhat Ġis Ġthe Ġcomplete Ġtext Ġof Ġ\" Ġ\" ?".
    assert vocab.encode(' what is the complete text of " "?') == [99, 16, 5, 1498, 2788, 9, 22, 22, 116]


def test_bins_round_half_to_even(vocab):
    # 0.5/999 -> 0.5 -> 0 and 1.5/999 -> 1.5 -> 2 under round-half-to-even (spec §2.5).
    box = torch.tensor([0.5, 1.5, 998.5, 999.0], dtype=torch.float64) / 999
    assert vocab.bins_for_box(box) == [vocab.bin_id(b) for b in (0, 2, 998, 999)]
    with pytest.raises(ValueError):
        vocab.bins_for_box((0.0, 0.0, 1.2, 1.0))


# ------------------------------------------------------------------------- encode_line
def test_encode_line_options(vocab):
    text = " a man riding a horse on the beach."
    assert vocab.encode_line(text, max_words=3, add_bos=False, add_eos=False).tolist() == vocab.encode(" a man riding")
    assert vocab.encode_line(text, max_words=100).tolist() == vocab.encode_line(text).tolist()
    assert vocab.encode_line(text, max_tokens=2).tolist() == [0, 10, 313, 2]
    assert vocab.encode_line("<bin_1> <bin_2> 13", use_bpe=False, add_bos=False, add_eos=False).tolist() == [
        58458, 58459, 4]
    assert vocab.encode_line("<bin_1> nope", use_bpe=False).tolist() == [0, 58458, 3, 2]
    assert vocab.encode_line("").tolist() == [0, 2]
    assert vocab.encode_line(" Hello").dtype == torch.long
    with pytest.raises(ValueError):
        vocab.encode_line(text, max_words=-1)


def test_added_symbols_inside_prompts(vocab):
    # parse_symbols: <mask>/<code_k>/<bin_k> are whole tokens that swallow the whitespace before them.
    enc = lambda text: vocab.encode(text, parse_symbols=True)
    assert enc(" a <mask> b") == vocab.encode(" a") + [vocab.mask] + vocab.encode(" b")
    assert enc("<bin_3><code_5>") == [vocab.bin_id(3), vocab.code_id(5)]
    # Not a symbol of this dictionary (only 1000 bins): stays ordinary text.
    assert max(enc(" <bin_1000>")) < vocab.mask
    # No lowercasing in the tokenizer (dataset normalizers do it): GPT-2 BPE is cased.
    assert vocab.encode(" Cat") != vocab.encode(" cat")


# ------------------------------------------------------------------------------ decode
@pytest.mark.parametrize("text", [
    " what does the image describe?",
    " an astronaut in a white space suit",
    "  two spaces, tabs\tand\nnewlines",
    " unicode: naïve café 你好 🙂",
])
def test_decode_round_trip(vocab, text):
    assert vocab.decode(vocab.encode_line(text)) == text


def test_decode_drops_specials_and_stops_at_eos(vocab):
    ids = vocab.encode(" a cat")
    assert vocab.decode([0] + ids + [2] + vocab.encode(" junk") + [1, 1]) == " a cat"
    assert vocab.decode(torch.tensor([0] + ids + [1, 1])) == " a cat"
    assert vocab.decode([vocab.bin_id(3)] + vocab.encode(" cup")) == "<bin_3> cup"
    assert vocab.decode([2]) == ""


def test_word_start_table(vocab):
    ws = vocab.is_word_start()
    assert ws.dtype == torch.bool and ws.shape == (len(vocab),)
    assert ws[:4].all()
    assert ws[99]            # Ġwhat
    assert not ws[4]         # "." has no leading space
    assert ws[50263]         # madeupword0002
    assert not ws[vocab.mask] and not ws[vocab.code_offset:].any()  # <mask>, codes, bins
    # "Ġastronaut" starts a word, a mid-word piece does not.
    pieces = vocab.encode(" astronauts")
    assert ws[pieces[0]] and not ws[pieces[1:]].any()
    assert vocab.is_word_start() is ws  # built once


# ------------------------------------------------------------------------------ BERT-CN
def test_bert_cn_layout(vocab_cn):
    v = vocab_cn
    assert v.kind == "bert"
    assert len(v) == 30325
    assert (v.mask, v.code_id(0), v.bin_id(0)) == (21132, 21133, 29325)
    assert v.symbol(347) == ""  # dict.txt line 344 is " 1" (spec §1.6)
    # fairseq index = BERT id + 4: "你" is vocab.txt line 873 (id 872), "好" line 1963.
    assert v.encode("你好") == [876, 1966]
    assert v.encode("HELLO") == v.encode("hello")  # uncased
    assert v.encode_line("你好", add_bos=True).tolist() == [0, 876, 1966, 2]
    assert v.decode(v.encode_line("你好 <mask>", parse_symbols=True)) == "你 好 <mask>"
    ws = v.is_word_start()
    assert ws[876] and not ws[v.index("##s")]


# ------------------------------------------------ fidelity with OFA's own tokenizers (issue 14)
# Symbols inside dataset text are characters, BERT-CN keeps its specials whole and cleans up the
# decoded string, and OFA-CN's text normaliser; checked against OFA's files.
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
