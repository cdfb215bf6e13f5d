"""OFA's decoding settings per task (spec ofa_data_and_tasks.md §7.3): what ``generate()``,
``ofa-ds generate`` and the task evaluations use unless told otherwise.

Ids that depend on the vocabulary (the image-code range) come from ``vocab`` when given,
else from OFA's English dictionary (codes 50265..58456).
"""
from __future__ import annotations

import dataclasses

from ofa_ds.generation.generator import GenerationConfig

OFA_CODE_RANGE = (50265, 58457)

TASK_GENERATION: dict[str, dict] = {
    # evaluate_caption.sh / --eval-args of the caption and SCST stages
    "caption": dict(beam=5, max_len_b=16, no_repeat_ngram_size=3),
    # evaluate_refcoco*.sh: exactly 4 tokens (one box) then the forced eos
    "refcoco": dict(beam=5, min_len=4, max_len_b=4, no_repeat_ngram_size=3),
    # evaluate_gigaword.sh
    "gigaword": dict(beam=6, lenpen=0.7, max_len_b=32, no_repeat_ngram_size=3),
    # VQA beam-search inference (the answer trie stops it after a few tokens)
    "vqa_gen": dict(beam=5, max_len_b=200, normalize_scores=False),
    # evaluate_image_gen.sh: 24 samples of exactly 1024 codes each
    "image_gen": dict(beam=24, min_len=1024, max_len_b=1024, sampling=True, sampling_topk=256,
                      temperature=1.0, gen_code=True, constraint_range=OFA_CODE_RANGE),
}
TASK_ALIASES = {"caption_scst": "caption", "refcocoplus": "refcoco", "refcocog": "refcoco", "vqa": "vqa_gen"}


def task_generation_config(task: str = "caption", vocab=None, **overrides) -> GenerationConfig:
    """OFA's settings for ``task``, with ``overrides`` (GenerationConfig fields) applied."""
    name = TASK_ALIASES.get(task, task)
    if name not in TASK_GENERATION:
        raise ValueError(f"no generation settings for task {task!r}; known: {sorted(TASK_GENERATION)}")
    settings = dict(TASK_GENERATION[name])
    if settings.get("constraint_range") == OFA_CODE_RANGE and vocab is not None:
        settings["constraint_range"] = (vocab.code_offset, vocab.code_offset + vocab.code_dict_size)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(GenerationConfig)}
    if unknown:
        raise TypeError(f"unknown generation settings {sorted(unknown)}")
    return GenerationConfig(**{**settings, **overrides})
