"""The OFA-Large/Huge recipes parse, pass the layout validation with the DeepSpeed JSON
the engine generates from them, keep OFA's 2048-row global batch, and fit per the planner."""
import json
from pathlib import Path

import pytest

from ofa_ds.config.flavors import get_flavor
from ofa_ds.config.load import load_config
from ofa_ds.engine.ds_config import build_ds_config
from ofa_ds.parallel.dims import ParallelDims
from ofa_ds.parallel.planner import estimate

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"huge_1node": 8, "huge_4node": 32, "large_1node": 8}  # name -> GPUs


@pytest.mark.parametrize("name, gpus", RECIPES.items())
def test_recipe_is_valid_and_fits(name, gpus):
    cfg = load_config(ROOT / "launch" / "configs" / f"{name}.toml")
    ds = build_ds_config(cfg, on_gpu=True)
    t = cfg.train
    dims = ParallelDims(dp=-1, tp=cfg.parallel.tp, pp=cfg.parallel.pp, zero_stage=t.zero_stage, offload=t.offload,
                        precision=t.precision, device="cuda")
    model = get_flavor(cfg.model.flavor)
    dims.validate(gpus, model, ds_config=ds)
    assert t.micro_batch * t.grad_accum * dims.dp == 2048
    d = cfg.data
    e = estimate(model, dims, micro_batch=t.micro_batch, image_size=d.patch_image_size, task=cfg.task.name,
                 code_image_size=d.code_image_size, sample_patch_num=d.sample_patch_num, weights=d.weights or None,
                 checkpoint_activations=cfg.model.activation_checkpointing)
    assert e.fits(80), f"{name}: {e.total / 2**30:.1f} GB"
    assert (ROOT / "launch" / f"{name}.sh").is_file()


def test_pipeline_template_carries_the_unpartitioned_flags():
    ds = json.loads((ROOT / "ds_configs" / "pp_zero1.json").read_text())
    ParallelDims(dp=-1, tp=2, pp=2, zero_stage=1, precision="fp32", device="cuda").validate(8, None, ds_config=ds)
