"""OFA's joint vocabulary: a BPE tokenizer plus a fairseq-style dictionary (spec §1).

A ``Vocabulary`` is built from a directory in one of two layouts, both shipped by the OFA
repository (``utils/BPE`` and ``utils/BERT_CN_dict``) or written by ``ofa-ds build-vocab``:

* GPT-2 byte-level BPE: ``encoder.json`` + ``vocab.bpe`` + ``dict.txt``;
* Chinese BERT WordPiece: ``vocab.txt`` + ``dict.txt``.

Text goes through the tokenizer (the ``tokenizers`` library) to tokenizer symbols, and each
symbol is looked up in the dictionary. The dictionary order *is* the id assignment:

    <s>=0 <pad>=1 </s>=2 <unk>=3 | dict.txt lines in file order | <mask> | <code_0..K-1> | <bin_0..N-1>

so ``dict index != tokenizer id``. For OFA's GPT-2 files that gives 59,457 entries, for the
Chinese files 30,325.

Text with ``<mask>``, ``<code_k>`` or ``<bin_k>`` in it: which encoding to call.

* **Dataset text** (captions, questions, answers, pure text, category names, and prompts built
  around them): ``encode(text)`` / ``encode_line(text)``, the default ``parse_symbols=False``.
  The whole string goes through the tokenizer as characters, as OFA's ``encode_text`` does, so a
  literal ``"<mask>"`` inside a caption is ``Ġ< mask >``, never the mask id.
* **Prompts whose symbols are meant** (a user's grounded-captioning prompt ``"... region:
  <bin_12> <bin_40> ..."``, a hand-written prompt with ``<mask>``): ``parse_symbols=True``.
  Literal symbols become their single ids and absorb the whitespace before them, as the HF
  tokenizer's ``<mask>`` does.
* **Symbols only** (``"<bin_1> <bin_2> <bin_3> <bin_4>"``): ``encode_line(s, use_bpe=False)``,
  OFA's ``use_bpe=False``: each space-separated symbol is looked up.
* Code that has the ids already (boxes, image codes) should append ids (``bins_for_box``,
  ``code_id``) rather than write symbols into text.

BERT-CN (OFA-CN): BERT's own ``[PAD] [UNK] [CLS] [SEP] [MASK]`` written in text stay whole tokens
(case-sensitive, as BertTokenizer's never-split list), and decoding applies BERT's cleanup to the
joined string (``giraffe ' s`` -> ``giraffe's``). OFA-CN's text normaliser is
``ofa_ds.data.streams.common.pre_chinese``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")

# OFA's added symbols may appear literally inside text (e.g. a prompt holding "<mask>", or a
# detection target "<bin_1> <bin_2> ... cup"). They are never BPE-split, and like the BART/HF-OFA
# tokenizer's <mask> they absorb the whitespace in front of them.
_ADDED_SYMBOL_RE = re.compile(r"\s*(<mask>|<code_\d+>|<bin_\d+>)")


def _read_dict_symbols(path: Path) -> list[str]:
    """Symbols of a fairseq ``dict.txt`` (``"<symbol> <count>"`` per line), in file order."""
    symbols = []
    # Iterating a text-mode file splits on "\n" only, so a symbol holding U+2028 stays one line.
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            symbol, sep, count = line.rpartition(" ")
            if not sep or not count.lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected '<symbol> <count>', got {line!r}")
            # OFA-CN's dict.txt line 344 is " 1", i.e. the empty symbol; fairseq keeps it, so do we.
            symbols.append(symbol)
    return symbols


def _gpt2_tokenizer(encoder_json: Path, vocab_bpe: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    # GPT-2's own pretokenization regex; no prefix space: OFA puts the leading space in the data.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# BERT's clean-up of decoded text (transformers' clean_up_tokenization), applied to the joined
# string: a per-token clean-up never sees " ' s" as one piece.
_BERT_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def bert_cleanup(text: str) -> str:
    for before, after in _BERT_CLEANUP:
        text = text.replace(before, after)
    return text


def _bert_tokenizer(vocab_txt: Path) -> Tokenizer:
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_txt), unk_token="[UNK]"))
    # Uncased BERT (do_lower_case=True), as OFA-CN's BertTokenizer.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # BertTokenizer never splits its special tokens (matched before lowercasing, so only in
    # capitals); special added tokens are matched on the raw text here too.
    tok.add_special_tokens([t for t in BERT_SPECIALS if tok.token_to_id(t) is not None])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # cleanup: bert_cleanup on the string
    return tok


class Vocabulary:
    """OFA tokenizer + dictionary. Build it with :meth:`from_dir`.

    Attributes: ``bos``/``pad``/``eos``/``unk`` (0-3), ``mask``, ``code_offset`` (id of
    ``<code_0>``), ``bin_offset`` (id of ``<bin_0>``), ``num_bins``, ``code_dict_size``,
    ``kind`` (``"gpt2"`` or ``"bert"``).
    """

    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3

    def __init__(self, tokenizer: Tokenizer, dict_symbols: Sequence[str], *, kind: str,
                 num_bins: int = 1000, code_dict_size: int = 8192):
        if kind not in ("gpt2", "bert"):
            raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'gpt2' or 'bert')")
        if num_bins < 2 or code_dict_size < 1:
            raise ValueError(f"need num_bins >= 2 and code_dict_size >= 1, got {num_bins}, {code_dict_size}")
        self.kind = kind
        self.num_bins = num_bins
        self.code_dict_size = code_dict_size
        self._tok = tokenizer

        symbols = list(SPECIALS) + list(dict_symbols)
        self.mask = len(symbols)
        symbols.append("<mask>")
        self.code_offset = len(symbols)
        symbols += [f"<code_{k}>" for k in range(code_dict_size)]
        self.bin_offset = len(symbols)
        symbols += [f"<bin_{j}>" for j in range(num_bins)]
        self._symbols = symbols
        # fairseq's Dictionary keeps the first index of a repeated symbol.
        self._indices: dict[str, int] = {}
        for i, s in enumerate(symbols):
            self._indices.setdefault(s, i)

        # tokenizer id -> dict index, so encoding is one array lookup after the tokenizer.
        # GPT-2 dict symbols are tokenizer ids written in decimal; BERT ones are the tokens.
        vocab = tokenizer.get_vocab()
        self._tok_to_dict = np.full(max(vocab.values()) + 1, self.unk, dtype=np.int64)
        for token, tok_id in vocab.items():
            key = str(tok_id) if kind == "gpt2" else token
            self._tok_to_dict[tok_id] = self._indices.get(key, self.unk)

        # dict index -> tokenizer piece used for decoding; non-token symbols pass through as text.
        self._pieces = [self._piece(s) for s in symbols]
        self._word_start: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def from_dir(cls, path, *, num_bins: int = 1000, code_dict_size: int = 8192) -> "Vocabulary":
        """Load the GPT-2 layout (encoder.json, vocab.bpe, dict.txt) or BERT-CN (vocab.txt, dict.txt)."""
        path = Path(path)
        if not (path / "dict.txt").is_file():
            raise ValueError(f"vocabulary directory {path} has no dict.txt "
                             "(get OFA's files from the OFA repository's utils/BPE)")
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            tok, kind = _gpt2_tokenizer(path / "encoder.json", path / "vocab.bpe"), "gpt2"
        elif (path / "vocab.txt").is_file():
            tok, kind = _bert_tokenizer(path / "vocab.txt"), "bert"
        else:
            raise ValueError(f"vocabulary directory {path} needs encoder.json + vocab.bpe (GPT-2 BPE) "
                             "or vocab.txt (BERT WordPiece) beside dict.txt")
        return cls(tok, _read_dict_symbols(path / "dict.txt"), kind=kind,
                   num_bins=num_bins, code_dict_size=code_dict_size)

    def _piece(self, symbol: str) -> str:
        if self.kind == "gpt2" and symbol.isdigit():
            piece = self._tok.id_to_token(int(symbol))
            if piece is not None:
                return piece
        return symbol

    # ------------------------------------------------------------------------------ dictionary
    def __len__(self) -> int:
        return len(self._symbols)

    def symbol(self, idx: int) -> str:
        """The dictionary symbol at ``idx`` (a GPT-2 id string, a WordPiece, or ``<...>``)."""
        return self._symbols[idx]

    def index(self, symbol: str) -> int:
        """Dictionary index of ``symbol``; ``unk`` if absent (fairseq semantics)."""
        return self._indices.get(symbol, self.unk)

    def code_id(self, k: int) -> int:
        """Id of the VQ-GAN code token ``<code_k>``."""
        if not 0 <= k < self.code_dict_size:
            raise ValueError(f"code {k} outside [0, {self.code_dict_size})")
        return self.code_offset + k

    def bin_id(self, j: int) -> int:
        """Id of the coordinate token ``<bin_j>``."""
        if not 0 <= j < self.num_bins:
            raise ValueError(f"bin {j} outside [0, {self.num_bins})")
        return self.bin_offset + j

    def bins_for_box(self, box) -> list[int]:
        """Bin token ids for a box already divided by ``max_image_size`` (spec §2.5).

        ``box`` is (x0, y0, x1, y1) in [0, 1]; each value maps to ``round(v * (num_bins - 1))``
        with torch's round-half-to-even. Python numbers are computed in float32 as upstream does.
        """
        v = torch.as_tensor(box, dtype=None if torch.is_tensor(box) else torch.float32)
        bins = (v * (self.num_bins - 1)).round().long().tolist()
        return [self.bin_id(b) for b in bins]

    def is_word_start(self) -> torch.BoolTensor:
        """Per-index word-start flags for whole-word masking (spec §1.5); built once, cached.

        GPT-2: specials, ``madeupword*`` and non-numeric symbols start words; a BPE symbol does
        iff its text begins with a space; ``<mask>``/codes/bins decode to themselves and do
        not. BERT: every symbol except ``##`` continuation pieces (fairseq's BertBPE rule).
        """
        if self._word_start is None:
            flags = []
            for i, sym in enumerate(self._symbols):
                if i < len(SPECIALS) or sym.startswith("madeupword"):
                    flags.append(True)
                elif self.kind == "bert":
                    flags.append(not sym.startswith("##"))
                elif sym.startswith("<"):
                    flags.append(False)
                elif not sym.isdigit():
                    flags.append(True)
                else:
                    # Byte-level BPE spells the space byte as "Ġ" (U+0120).
                    flags.append(self._pieces[i].startswith("\u0120"))
            self._word_start = torch.tensor(flags, dtype=torch.bool)
        return self._word_start

    # -------------------------------------------------------------------------------- encoding
    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._tok_to_dict[ids].tolist()

    def encode(self, text: str, *, parse_symbols: bool = False) -> list[int]:
        """OFA's ``encode_text`` without bos/eos: tokenizer, then dictionary lookup.

        The text is taken as is: no lowercasing and no added leading space (OFA's prompts and
        targets carry their own leading space, spec §1.3). By default every character goes
        through the tokenizer, as OFA encodes dataset text: ``' a <mask>'`` is ``Ġa Ġ< mask >``.
        ``parse_symbols=True`` (prompts that mean their symbols): literal ``<mask>``,
        ``<code_k>`` and ``<bin_k>`` become their single ids and swallow the whitespace before
        them, so ``' cat <mask> on'`` encodes as ``Ġcat <mask> Ġon``.
        """
        if not parse_symbols:
            return self._encode_plain(text)
        ids: list[int] = []
        pos = 0
        for m in _ADDED_SYMBOL_RE.finditer(text):
            idx = self._indices.get(m.group(1))
            if idx is None:  # e.g. <bin_5000> with 1000 bins: not a symbol, keep it as text
                continue
            ids += self._encode_plain(text[pos:m.start()])
            ids.append(idx)
            pos = m.end()
        ids += self._encode_plain(text[pos:])
        return ids

    def encode_line(self, text: str, *, add_bos: bool = True, add_eos: bool = True,
                    max_words: int | None = None, max_tokens: int | None = None,
                    use_bpe: bool = True, parse_symbols: bool = False) -> torch.LongTensor:
        """Encode one sample field the way OFA datasets do: ``[bos ; tokens ; eos]``.

        * ``max_words``: keep the text up to the end of its ``max_words``-th whitespace-separated
          word (the word limit of ``pre_caption``/``pre_question``), leading space kept.
        * ``max_tokens``: keep the first N tokens before bos/eos (``encode_text(length=N)``).
        * ``use_bpe=False``: the text is already space-separated dictionary symbols (e.g.
          ``"<bin_1> <bin_2> <bin_3> <bin_4>"``); each is looked up, missing ones become unk.
        * ``parse_symbols=True``: literal ``<mask>``/``<code_k>``/``<bin_k>`` are single ids
          (for prompts; see :meth:`encode` and the module docstring). Default: OFA's
          character-level encoding of dataset text.

        Lowercasing and stripping belong to the dataset's normalizers (spec §2.3), not here.
        """
        if max_words is not None:
            if max_words < 0:
                raise ValueError(f"max_words must be >= 0, got {max_words}")
            words = list(re.finditer(r"\S+", text))
            if len(words) > max_words:
                text = text[: words[max_words - 1].end()] if max_words else ""
        ids = self.encode(text, parse_symbols=parse_symbols) if use_bpe else [self.index(s) for s in text.split()]
        if max_tokens is not None:
            if max_tokens < 0:
                raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
            ids = ids[:max_tokens]
        ids = ([self.bos] if add_bos else []) + ids + ([self.eos] if add_eos else [])
        return torch.tensor(ids, dtype=torch.long)

    # -------------------------------------------------------------------------------- decoding
    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of a token sequence, as OFA's decode gives it (spec §1.4).

        bos and pad are dropped and decoding stops at the first eos (upstream drops every eos,
        which is the same for generated sequences). ``<bin_k>``, ``<code_k>``, ``<mask>`` and
        ``<unk>`` appear as literal text, glued to their neighbours as in upstream.
        """
        if torch.is_tensor(ids):
            ids = ids.tolist()
        pieces = []
        for i in ids:
            if i == self.eos:
                break
            if i in (self.bos, self.pad):
                continue
            pieces.append(self._pieces[i])
        if not pieces:
            return ""
        text = self._tok.decoder.decode(pieces)
        return bert_cleanup(text) if self.kind == "bert" else text

