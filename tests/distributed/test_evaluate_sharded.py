"""`ofa-ds evaluate` over 2 data-parallel processes gives the metric and the predictions file
of 1 process (rows are dealt to the ranks, gathered back in row order, scored once)."""
from __future__ import annotations

import json

import pytest

from tests.distributed.harness import run_workers

pytestmark = pytest.mark.slow

TASKS = ("vqa_gen", "sst2")


def evaluate_all(rank: int, world: int, root: str, model_dir: str, out: str) -> dict:
    from ofa_ds.tasks.evaluation import main

    for task in TASKS:
        args = ["--config", f"{root}/{task}.toml", "--checkpoint", model_dir, "--split", "valid",
                "--out", f"{out}/{task}", "task.eval_batch=1"]
        assert main(args) == 0
    return {}


def test_two_processes_give_the_same_metrics_and_predictions(sample_data, tmp_path):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel
    from ofa_ds.tasks.evaluation import main

    vocab = Vocabulary.from_dir(sample_data / "vocab")
    OFAModel(get_flavor("test", vocab_size=len(vocab))).eval().save_pretrained(tmp_path / "model")
    for task in TASKS:
        (tmp_path / f"{task}.toml").write_text(
            f'[task]\nname = "{task}"\n[data]\nroot = "{sample_data}"\npatch_image_size = 64\n')
    for task in TASKS:
        assert main(["--config", str(tmp_path / f"{task}.toml"), "--checkpoint", str(tmp_path / "model"),
                     "--split", "valid", "--out", str(tmp_path / "one" / task)]) == 0
    run_workers(evaluate_all, 2, str(tmp_path), str(tmp_path / "model"), str(tmp_path / "two"), use_deepspeed=False)
    for task, name in zip(TASKS, ("valid_predictions.json", "valid_predictions.jsonl")):
        one, two = tmp_path / "one" / task, tmp_path / "two" / task
        assert (one / name).read_bytes() == (two / name).read_bytes(), task
        m1, m2 = (json.loads((d / "eval_valid.json").read_text()) for d in (one, two))
        # The loss is a float sum in another order (other batches, two partial sums): equal to rounding.
        assert m2.pop("valid_loss") == pytest.approx(m1.pop("valid_loss"), rel=1e-6)
        assert m1 == m2 and m1["rows"] == sum(1 for _ in open(sample_data / (
            "finetune/vqa/valid.tsv" if task == "vqa_gen" else "finetune/glue/sst2/valid.tsv")))
    preds = json.loads((tmp_path / "one" / "vqa_gen" / "valid_predictions.json").read_text())
    assert preds and set(preds[0]) == {"question_id", "answer"}
