"""Offline caption evaluation as OFA reports it: a COCO results file and the COCO caption
toolkit (``pycocoevalcap``: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) on it.

The toolkit's PTB tokenizer, METEOR and SPICE are Java programs. With ``java`` on the PATH
the captions go through the PTB tokenizer and METEOR runs; SPICE also needs the Stanford
CoreNLP models, which its first run downloads: it runs only when they are already in place.
Without Java, captions are tokenised in Python (lowercased, punctuation removed: the PTB
tokenizer's output on OFA's punctuation-free captions) and the Java metrics are listed as
skipped with the reason.
"""
from __future__ import annotations

import json
import logging
import shutil
import string
from pathlib import Path

logger = logging.getLogger("ofa_ds.tasks")
_PUNCT = str.maketrans("", "", string.punctuation)


def write_results(path, predictions: list[tuple[str, str]]) -> Path:
    """``[{"image_id", "caption"}]`` in prediction order (what OFA's evaluate.py writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"image_id": str(i), "caption": c} for i, c in predictions]))
    return path


def _python_tokenize(captions: dict) -> dict:
    return {k: [" ".join(c.lower().translate(_PUNCT).split()) for c in v] for k, v in captions.items()}


def _spice_models_present() -> bool:
    try:
        import pycocoevalcap.spice as spice
    except ImportError:
        return False
    lib = Path(list(spice.__path__)[0]) / "lib"
    return any(lib.glob("stanford-corenlp-*-models.jar"))


def coco_caption_scores(predictions: dict[str, str], references: dict[str, list[str]], *,
                        use_java: bool | None = None) -> dict:
    """Corpus scores of ``predictions`` (image id -> caption) against ``references`` (image id
    -> captions), keyed as the toolkit names them, plus ``skipped`` {metric: reason}."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise RuntimeError("COCO caption evaluation needs pycocoevalcap (pip install pycocoevalcap)") from err
    missing = sorted(set(predictions) ^ set(references))
    if missing:
        raise ValueError(f"predictions and references differ in image ids, e.g. {missing[:5]}")
    java = shutil.which("java") is not None if use_java is None else use_java
    gts = {k: [{"caption": c} for c in references[k]] for k in predictions}
    res = {k: [{"caption": predictions[k]}] for k in predictions}
    skipped: dict[str, str] = {}
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    else:
        gts = _python_tokenize({k: [d["caption"] for d in v] for k, v in gts.items()})
        res = _python_tokenize({k: [d["caption"] for d in v] for k, v in res.items()})
        skipped["tokenizer"] = "java not on PATH: Python tokenisation instead of the PTB tokenizer"
    scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.insert(1, (Meteor(), ["METEOR"]))
        if _spice_models_present():
            from pycocoevalcap.spice.spice import Spice

            scorers.append((Spice(), ["SPICE"]))
        else:
            skipped["SPICE"] = "the Stanford CoreNLP models SPICE downloads on first use are not installed"
    else:
        skipped["METEOR"] = skipped["SPICE"] = "java not on PATH"
    out: dict = {}
    for scorer, names in scorers:
        score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if len(names) > 1 else [score]):
            out[name] = float(value)
    for metric, reason in skipped.items():
        logger.warning("COCO caption evaluation: %s skipped (%s)", metric, reason)
    out["skipped"] = skipped
    return out
