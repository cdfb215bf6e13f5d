"""OFA's four pretraining streams (spec §3), each turning one TSV row into samples.

* :class:`VisionLanguageStream` -- caption / VQA / grounding rows, 2 samples per row;
* :class:`TextInfillingStream` -- whole-word span masking of plain text;
* :class:`ImageInfillingStream` -- predict the VQ codes of a masked image centre;
* :class:`DetectionStream` -- all boxes as bins plus category names.

A stream method takes the row index and a per-sample ``numpy.random.Generator``
(:func:`sample_rng`) and raises ``BadRow`` for an unusable row; ``mixture.py`` decides which
rows to read and what to do with bad ones.
"""
from ofa_ds.data.streams.common import (
    EXTRAS_CONF, PROMPT_CAPTION, PROMPT_DETECTION, PROMPT_GROUNDED_CAPTION, PROMPT_GROUNDING,
    PROMPT_IMAGE_INFILLING, PROMPT_ITM_CAPTION, PROMPT_ITM_QA, PROMPT_TEXT_INFILLING, STREAM_IDS,
    Sample, pre_caption, pre_chinese, pre_question, sample_rng, seq2seq,
)
from ofa_ds.data.streams.detection import DetectionStream
from ofa_ds.data.streams.image_infilling import ImageInfillingStream
from ofa_ds.data.streams.text_infilling import TextInfillingStream, whole_word_span_mask
from ofa_ds.data.streams.vision_language import NegativeSamples, VisionLanguageStream

__all__ = [
    "EXTRAS_CONF", "PROMPT_CAPTION", "PROMPT_DETECTION", "PROMPT_GROUNDED_CAPTION", "PROMPT_GROUNDING",
    "PROMPT_IMAGE_INFILLING", "PROMPT_ITM_CAPTION", "PROMPT_ITM_QA", "PROMPT_TEXT_INFILLING", "STREAM_IDS",
    "Sample", "pre_caption", "pre_chinese", "pre_question", "sample_rng", "seq2seq",
    "DetectionStream", "ImageInfillingStream", "TextInfillingStream", "whole_word_span_mask",
    "NegativeSamples", "VisionLanguageStream",
]
