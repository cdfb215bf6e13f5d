"""Caption metrics against the reference scorers: our CIDEr-D equals the COCO toolkit's
CIDEr (which is CIDEr-D) in corpus mode and OFA's CiderD with its cached validation table;
the COCO toolkit wrapper and results file."""
from __future__ import annotations

import json
import shutil

import pytest

from ofa_ds.tasks.cider import DocumentFrequencies, cider_d_scores
from ofa_ds.tasks.coco_caption import coco_caption_scores, write_results
from tests.helpers import finetune_golden as fg

HYPS = {"1": "a man riding a horse on the beach", "2": "two dogs play in the snow", "3": "a red bus"}
REFS = {"1": ["a man rides a horse along the beach", "a person on a horse near the sea"],
        "2": ["two dogs playing in snow", "dogs running through the snow", "two puppies in the snow"],
        "3": ["a red double decker bus on a street", "a bus driving down the road"]}


def test_corpus_cider_d_equals_coco_toolkit():
    from pycocoevalcap.cider.cider import Cider

    mean, per_image = Cider().compute_score(REFS, {k: [v] for k, v in HYPS.items()})
    ours = cider_d_scores(list(HYPS.values()), [REFS[k] for k in HYPS])
    assert ours == pytest.approx(list(per_image), abs=1e-12)
    assert sum(ours) / 3 == pytest.approx(mean, abs=1e-12)


def test_cached_cider_d_equals_ofa_validation():
    """OFA's in-training CIDEr-D (cached coco-valid-words table, no <eos>) on fixed hypotheses."""
    ref = fg.task("caption")["valid_step_forced"]
    call = ref["cider_scorer_call"]
    df = DocumentFrequencies.load(fg.data_file("cider_valid_df.json"))
    hyps = [r["caption"][0] for r in call["res"]]
    refs = [call["gts"][str(r["image_id"])] for r in call["res"]]
    scores = cider_d_scores(hyps, refs, document_frequencies=df)
    assert scores == pytest.approx(call["scores"], abs=1e-9)
    assert round(sum(scores) / len(scores), 3) == ref["reduced"]["cider"]


def test_results_file_and_toolkit_scores(tmp_path):
    path = write_results(tmp_path / "results.json", list(HYPS.items()))
    assert json.loads(path.read_text())[0] == {"image_id": "1", "caption": HYPS["1"]}
    perfect = coco_caption_scores({k: v[0] for k, v in REFS.items()}, REFS, use_java=False)
    assert perfect["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and perfect["ROUGE_L"] == pytest.approx(1.0)
    assert "METEOR" not in perfect and "java" in perfect["skipped"]["METEOR"]
    worse = coco_caption_scores(HYPS, REFS, use_java=False)
    assert worse["CIDEr"] < perfect["CIDEr"] and 0 < worse["Bleu_1"] < 1


@pytest.mark.slow  # METEOR's JVM loads its paraphrase table: ~20 s
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need java")
def test_toolkit_with_java_runs_meteor():
    hyps = {**HYPS, "3": REFS["3"][0]}  # one perfect caption among imperfect ones
    scores = coco_caption_scores(hyps, REFS)
    assert 0 < scores["METEOR"] < 1 and "tokenizer" not in scores["skipped"]
    assert scores["Bleu_1"] == pytest.approx(coco_caption_scores(hyps, REFS, use_java=False)["Bleu_1"], abs=0.05)
