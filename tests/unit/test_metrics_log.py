"""metrics.jsonl on resume: the records of replayed steps are dropped, so each step is logged once."""
from __future__ import annotations

import json

from ofa_ds.engine.metrics import MetricsLogger

OUT = {"loss": 1.0, "lr": 1e-4, "grad_norm": 1.0, "loss_scale": 1.0, "samples_per_s": 1.0,
       "tokens_per_s": 1.0, "mfu": 0.1, "step_time": 0.5}


def steps(path):
    return [(r["step"], "eval" in r) for r in map(json.loads, path.read_text().splitlines())]


def logger(out_dir, initial_step, tensorboard=False):
    return MetricsLogger(out_dir, enabled=True, tensorboard=tensorboard, progress=False, total_steps=6,
                         initial_step=initial_step)


def test_resume_drops_the_records_after_the_checkpoint(tmp_path):
    first = logger(tmp_path, 0)
    for step in range(1, 5):
        first.log_step(step, dict(OUT, loss=float(step)))
    first.log_eval(2, {"cider": 0.5})
    first.log_eval(4, {"cider": 0.7})
    first.jsonl.write('{"step": 5, "loss"')  # torn by a kill mid-write
    first.jsonl.flush()  # no close(): the process was killed

    resumed = logger(tmp_path, 2)  # the checkpoint was step 2
    assert steps(tmp_path / "metrics.jsonl") == [(1, False), (2, False), (2, True)]
    for step in (3, 4):
        resumed.log_step(step, dict(OUT, loss=float(step)))
    resumed.close()
    assert steps(tmp_path / "metrics.jsonl") == [(1, False), (2, False), (2, True), (3, False), (4, False)]


def test_tensorboard_purges_the_replayed_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = logger(tmp_path, 0, tensorboard=True)
    for step in (1, 2, 3):
        first.log_step(step, dict(OUT, loss=float(step)))
    first.close()
    resumed = logger(tmp_path, 1, tensorboard=True)  # the checkpoint was step 1
    resumed.log_step(2, dict(OUT, loss=20.0))
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 20.0)]
