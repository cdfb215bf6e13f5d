"""What every pretraining stream shares: the sample record, prompts, text normalisers, RNG.

A stream turns one TSV row into one or more :class:`Sample` records (spec §2.4): a seq2seq
triple ``source = [bos ; src ; eos]``, ``target = [tgt ; eos]``,
``prev_output_tokens = [bos ; tgt]`` plus an image and per-sample flags.

Randomness: each sample gets its own ``numpy.random.Generator`` seeded from
(seed, stream, epoch, global index) by :func:`sample_rng`, so a sample is reproducible alone,
whatever worker builds it and whatever was built before (see ``transforms.py`` for how this
differs from upstream OFA).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

# Pretraining prompts, verbatim including the leading space (spec §3.3). The grounded
# captioning prompt really starts with two spaces: it yields an extra lone "Ġ" token that the
# released checkpoints were trained with.
PROMPT_CAPTION = " what does the image describe?"
PROMPT_ITM_CAPTION = ' does the image describe " {} "?'
PROMPT_ITM_QA = ' what is the answer to question " {} ". is " {} "?'
PROMPT_GROUNDING = ' which region does the text " {} " describe?'
PROMPT_GROUNDED_CAPTION = "  what does the region describe? region:"
# Text infilling puts the masked text between these two halves.
PROMPT_TEXT_INFILLING_HEAD = ' what is the complete text of "'
PROMPT_TEXT_INFILLING_TAIL = ' "?'
PROMPT_TEXT_INFILLING = PROMPT_TEXT_INFILLING_HEAD + PROMPT_TEXT_INFILLING_TAIL
PROMPT_IMAGE_INFILLING = " what is the image in the middle part?"
PROMPT_DETECTION = " what are the objects in the image?"

# Stable small ids that enter the per-sample seed; never renumber them (it would change
# every augmentation of a resumed run).
STREAM_IDS = {"vision_language": 0, "text": 1, "image": 2, "detection": 3}

# Loss weight OFA gives every sample of the three pure streams (spec §3.5–3.7).
EXTRAS_CONF = 2.0


@dataclass
class Sample:
    """One seq2seq example; ``collate.collate`` stacks a list of these into a batch."""

    id: str
    source: torch.Tensor              # [S] long: [bos ; prompt ; eos]
    target: torch.Tensor              # [T] long: [tgt ; eos] (pad where not trained)
    prev_output_tokens: torch.Tensor  # [T] long: [bos ; tgt]
    patch_image: torch.Tensor         # [3, H, W] float, normalised
    patch_mask: bool                  # False: the image is a placeholder
    code_mask: bool | None            # True: target is image codes; None in the VL group
    conf: float                       # per-sample loss weight


def sample_rng(seed: int, stream: str, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample; a pure function of its arguments."""
    return np.random.default_rng([seed, STREAM_IDS[stream], epoch, index])


def seq2seq(vocab, sample_id: str, src: Sequence[int], tgt: Sequence[int], image: torch.Tensor,
            *, patch_mask: bool, code_mask: bool | None, conf: float) -> Sample:
    """Wrap token lists into the source/target/prev-output triple of spec §2.4."""
    src_t = torch.tensor([vocab.bos, *src, vocab.eos], dtype=torch.long)
    tgt_t = torch.tensor([*tgt, vocab.eos], dtype=torch.long)
    prev_t = torch.tensor([vocab.bos, *tgt], dtype=torch.long)
    return Sample(sample_id, src_t, tgt_t, prev_t, image, patch_mask, code_mask, conf)


# ---------------------------------------------------------------------------------------------
# Text normalisers (spec §2.3)

_LEADING = ",.!?*#:;~"
_SPACES = re.compile(r"\s{2,}")


def _normalise(text: str, max_words: int | None) -> str:
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    if max_words is not None:
        text = " ".join(text.split(" ")[:max_words])
    return text


def pre_caption(caption: str, max_words: int | None = None) -> str:
    """Lowercase, strip leading punctuation, ``-``/``/`` to spaces, ``<person>`` to person."""
    text = caption.lower().lstrip(_LEADING).replace("-", " ").replace("/", " ")
    return _normalise(text.replace("<person>", "person"), max_words)


def pre_question(question: str, max_words: int | None = None) -> str:
    """As :func:`pre_caption` without the ``<person>`` rule; no ``?`` is added."""
    text = question.lower().lstrip(_LEADING).replace("-", " ").replace("/", " ")
    return _normalise(text, max_words)


# OFA-CN's pre_chinese means to blank these out, but calls str.replace with each whole string
# (never found in text), so upstream it changes nothing (spec §10.8).
_PUNCT_ZH = "，。？！、；：“”‘’（）《》【】…—～·「」"
_PUNCT_EN = string.punctuation


def pre_chinese(text: str, max_chars: int | None = None, *, remove_punctuation: bool = False) -> str:
    """OFA-CN's text normaliser (BERT-CN tasks): lowercase, collapse whitespace runs to one space,
    strip, keep the first ``max_chars`` **characters** (Chinese has no word spaces; upstream
    slices the string). ``remove_punctuation=True`` blanks Chinese and ASCII punctuation, what
    upstream's (inert) replace intends; off by default for parity with OFA-CN's checkpoints."""
    text = text.lower()
    if remove_punctuation:
        text = text.translate({ord(c): " " for c in _PUNCT_ZH + _PUNCT_EN})
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    return text[:max_chars] if max_chars is not None else text


def check_columns(tsv, fields: tuple[str, ...], stream: str) -> None:
    """Fail early (a configuration mistake, not a bad row) when ``selected_cols`` does not give
    the fields a stream expects."""
    # The format fixes the column count, never the first row: the fields, or as far as
    # selected_cols reaches into a wider file.
    tsv.expect_columns(max(len(fields), tsv.min_columns))
    got = len(tsv.selected_cols) if tsv.selected_cols is not None else tsv.num_columns
    if len(tsv) and got != len(fields):
        raise ValueError(f"{stream} file {tsv.path} yields {got} fields per row with selected_cols="
                         f"{tsv.selected_cols}; expected {len(fields)}: {', '.join(fields)}")
