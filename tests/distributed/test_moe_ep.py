"""Expert parallelism (DeepSpeed MoE, 2 experts over 2 ranks, gloo) against a
single-process reference that holds both experts.

Each rank routes its own tokens; the all-to-all sends every token to the rank that owns
its expert and back. The reference computes top-1 routing by hand with copies of both
experts, so it needs no communication at all:

* outputs and input gradients must match per rank;
* an expert's gradient on its owner rank is the sum over the tokens of *both* ranks, so
  it must match the reference gradient summed over ranks;
* the (replicated) router's gradient covers local tokens only, so it matches per rank.
"""
from __future__ import annotations

import pytest
import torch

from tests.distributed.harness import run_workers

pytest.importorskip("deepspeed")


def _perturb_expert(expert: torch.nn.Module, global_id: int) -> None:
    """Make the experts differ, deterministically by global expert id."""
    g = torch.Generator().manual_seed(100 + global_id)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _ep_worker(rank: int, world: int):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.moe import ExpertFFN, apply_moe, init_moe_groups
    from ofa_ds.model.ofa import OFAModel

    torch.manual_seed(0)  # identical model (and router) on both ranks
    model = OFAModel(get_flavor("test", vocab_size=100, dropout=0.0))
    dense_layer = model.encoder.layers[0]
    references = [ExpertFFN.from_dense(dense_layer) for _ in range(world)]
    for e, expert in enumerate(references):
        _perturb_expert(expert, e)
    # capacity_factor = number of experts: each expert can take every token, none dropped.
    apply_moe(model, "encoder:0", num_experts=world, top_k=1, capacity_factor=float(world), ep_size=world)
    init_moe_groups(model)
    moe = model.encoder.layers[0].moe
    ds_moe = moe.inner.deepspeed_moe
    assert ds_moe.num_local_experts == 1
    (local_expert,) = ds_moe.experts.deepspeed_experts
    _perturb_expert(local_expert, rank)  # the local expert is global expert `rank`

    g = torch.Generator().manual_seed(10 + rank)  # different tokens on each rank
    x = torch.randn(2, 6, 64, generator=g, requires_grad=True)
    w = torch.randn(2, 6, 64, generator=g)
    moe.train()
    out = moe(x)
    (out * w).sum().backward()

    # Reference: top-1 routing by hand, output scaled by the chosen expert's gate probability.
    x_ref = x.detach().clone().requires_grad_()
    wg = ds_moe.gate.wg.weight.detach().clone().requires_grad_()
    tokens = x_ref.reshape(-1, 64)
    probs = torch.softmax(tokens.float() @ wg.t(), dim=-1)
    choice = probs.argmax(-1)
    ref_out = torch.zeros_like(tokens)
    for e, expert in enumerate(references):
        sel = choice == e
        ref_out[sel] = probs[sel, e, None] * expert(tokens[sel])
    (ref_out.view_as(x) * w).sum().backward()

    for expert in references:  # an owner's gradient covers both ranks' tokens
        for p in expert.parameters():
            torch.distributed.all_reduce(p.grad)
    expert_err = max((a.grad - b.grad).abs().max().item()
                     for a, b in zip(local_expert.parameters(), references[rank].parameters()))
    return dict(
        out_err=(out.detach() - ref_out.view_as(x).detach()).abs().max().item(),
        dx_err=(x.grad - x_ref.grad).abs().max().item(),
        expert_err=expert_err,
        gate_err=(ds_moe.gate.wg.weight.grad - wg.grad).abs().max().item(),
        routed=torch.bincount(choice, minlength=world).tolist(),
        aux=moe.aux_loss.item(),
    )


@pytest.mark.slow
def test_expert_parallel_two_ranks_matches_local_reference():
    results = run_workers(_ep_worker, 2)
    for r in results:
        assert r["out_err"] < 1e-5 and r["dx_err"] < 1e-5, r
        assert r["expert_err"] < 1e-4 and r["gate_err"] < 1e-5, r
        assert r["aux"] > 0 and r["aux"] == r["aux"]  # finite
    # The test only means something if tokens actually crossed ranks.
    assert sum(r["routed"][1 - rank] for rank, r in enumerate(results)) > 0, results
