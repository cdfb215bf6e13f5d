"""The planner's activation figure for a real pretraining micro-batch (``train.micro_batch``
VL rows: 2 samples each plus the extras group) against what autograd actually keeps for the
backward of that batch on CPU (fp32), for the ``test`` and ``tiny`` flavors: within 15%.
(The model-state terms are checked exactly in test_parallel_planner.py.)"""
from __future__ import annotations

import pytest
import torch

from ofa_ds.data.vocab import Vocabulary
from ofa_ds.parallel.dims import ParallelDims
from ofa_ds.parallel.planner import estimate
from ofa_ds.tasks import build_task
from tests.engine.helpers import engine_config


def saved_for_backward(fn, model) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs, weights excluded."""
    storages = {}
    weights = {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(t):
        if t.untyped_storage()._cdata not in weights:
            storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("flavor", ["test", "tiny"])
def test_planner_activations_match_a_real_micro_batch(flavor, sample_data, tmp_path):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.ofa import OFAModel

    cfg = engine_config(sample_data, tmp_path, **{"model.flavor": flavor, "model.dropout": 0.0,
                                                 "model.encoder_drop_path_rate": 0.0,
                                                 "model.decoder_drop_path_rate": 0.0})
    vocab = Vocabulary.from_dir(sample_data / "vocab")
    task = build_task(cfg, vocab)
    batch = next(iter(task.build_train_loader(rank=0, world_size=1, seed=cfg.train.seed)))
    model = OFAModel(get_flavor(flavor, vocab_size=len(vocab), dropout=0.0, encoder_drop_path_rate=0.0,
                                decoder_drop_path_rate=0.0)).train()
    measured = saved_for_backward(lambda: task.training_forward(model, batch, update_num=0,
                                                                 denominators=task.token_counts(batch)), model)
    vl, extras = batch  # the batch's own padded lengths (the planner's defaults are upper bounds)
    lengths = [(g["net_input"]["src_tokens"].shape[1], g["net_input"]["prev_output_tokens"].shape[1])
               for g in (vl, extras)]
    assert vl["net_input"]["src_tokens"].shape[0] == 2 * cfg.train.micro_batch  # the unit: 2 samples per row
    d = cfg.data
    dims = ParallelDims(dp=1, zero_stage=0, precision="fp32", device="cpu").validate(1)
    predicted = estimate(model.config, dims, micro_batch=cfg.train.micro_batch, image_size=d.patch_image_size,
                         code_image_size=d.code_image_size, sample_patch_num=d.sample_patch_num,
                         text_len=lengths[0][0], tgt_len=lengths[0][1], extras_lengths=lengths[1]).activations
    print(f"{flavor}: planner {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert predicted == pytest.approx(measured, rel=0.15)
