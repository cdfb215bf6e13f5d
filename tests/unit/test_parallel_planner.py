"""ofa-ds plan: its parameter and optimizer terms equal what the tiny flavor allocates."""
import torch

from ofa_ds.config.flavors import EXPECTED_PARAMS, get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.parallel.dims import ParallelDims, padded_vocab_size
from ofa_ds.parallel.groups import TPContext
from ofa_ds.parallel.plan import apply_tensor_parallel
from ofa_ds.parallel.planner import estimate, main, plan

TINY = get_flavor("tiny")


def _estimate(dims, world):
    return estimate(TINY, dims.validate(world), micro_batch=1, image_size=64, text_len=8, tgt_len=8)


def test_param_and_optimizer_terms_match_real_allocations():
    model = OFAModel(TINY)
    e = _estimate(ParallelDims(dp=1, zero_stage=0, precision="fp32", device="cpu"), 1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights == EXPECTED_PARAMS["tiny"] * 4 == e.params == e.grads
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    states = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() > 0)
    assert states == e.optimizer

    bf16 = _estimate(ParallelDims(dp=1, zero_stage=0, precision="bf16", device="cpu"), 1)
    assert bf16.params == sum(p.numel() * p.element_size() for p in model.to(torch.bfloat16).parameters())
    assert bf16.optimizer == 12 * EXPECTED_PARAMS["tiny"]  # fp32 master + m + v


def test_tensor_parallel_and_zero_terms():
    with torch.device("meta"):
        model = OFAModel(TINY.replace(vocab_size=padded_vocab_size(TINY.vocab_size, 2)))
    apply_tensor_parallel(model, TPContext(None, 0, 2))
    local = sum(p.numel() for p in model.parameters())
    e = _estimate(ParallelDims(dp=1, tp=2, zero_stage=0, precision="fp32", device="cpu"), 2)
    assert e.params == 4 * local
    z1 = _estimate(ParallelDims(dp=4, zero_stage=1, precision="fp32", device="cpu"), 4)
    z3 = _estimate(ParallelDims(dp=4, zero_stage=3, precision="fp32", device="cpu"), 4)
    full = 4 * EXPECTED_PARAMS["tiny"]
    assert z1.optimizer == 2 * full / 4 and z1.grads == full and z3.params == full / 4 == z3.grads
    pp = _estimate(ParallelDims(dp=1, pp=2, zero_stage=1, precision="fp32", device="cpu"), 2)
    assert pp.params < full  # the busiest stage holds part of the model (+ the tied embedding)


def test_plan_prefers_the_simplest_layout_that_fits(capsys):
    best = plan(TINY, 8, 80, micro_batch=2, image_size=256)[0]
    assert (best.dims.tp, best.dims.pp, best.dims.offload) == (1, 1, False)
    assert main(["--flavor", "tiny", "--gpus", "4", "--gpu-mem", "16", "--image-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "recommended: dp4xtp1xpp1/zero1/bf16" in out
