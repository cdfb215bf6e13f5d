"""ParallelDims: every invalid layout is refused before any process group exists, with a
message that names the fix."""
import pytest

from ofa_ds.config.flavors import get_flavor
from ofa_ds.parallel.dims import ParallelDims, padded_vocab_size

HUGE = get_flavor("huge", vocab_size=59520)  # padded so that TP divides it


def test_infers_the_minus_one_degree():
    dims = ParallelDims(dp=-1, tp=2, pp=2, zero_stage=1).validate(16, HUGE)
    assert (dims.dp, dims.tp, dims.pp) == (4, 2, 2)
    assert ParallelDims(dp=4, tp=-1, zero_stage=2).validate(8).tp == 2


@pytest.mark.parametrize("dims, world, cfg, message", [
    (ParallelDims(pp=2, zero_stage=2), 4, None, "ZeRO 0/1 only"),
    (ParallelDims(pp=2, zero_stage=3), 4, None, "zero_stage=1 with pp>1"),
    (ParallelDims(dp=3, tp=2), 8, None, "does not match the world size 8"),
    (ParallelDims(dp=-1, tp=3), 8, None, "not divisible by the product"),
    (ParallelDims(dp=-1, tp=-1), 8, None, "only one degree can be -1"),
    (ParallelDims(tp=0), 8, None, "positive integers"),
    (ParallelDims(tp=3), 3, HUGE, "encoder_heads=16 is not divisible by tp=3"),
    (ParallelDims(tp=2), 2, get_flavor("test", decoder_heads=2, encoder_heads=4, ffn_dim=128, vocab_size=512)
     .replace(decoder_heads=1), "decoder_heads=1"),
    (ParallelDims(tp=4), 4, get_flavor("test", ffn_dim=130, vocab_size=512), "ffn_dim=130"),
    (ParallelDims(tp=2), 2, get_flavor("huge"), "pad the vocabulary to 59648"),
    (ParallelDims(pp=8, zero_stage=1), 8, get_flavor("test", vocab_size=512), "only 4 transformer layers"),
    (ParallelDims(pp=2, tp=2, sequence_parallel=True, pipe_partitioned=True), 4, None,
     "sequence parallelism with partitioned pipeline activations"),
    (ParallelDims(tp=2, sequence_parallel=True), 2, None, "not implemented for OFA"),
    (ParallelDims(pp=2, tp=2, pipe_partitioned=True), 4, None, "pipe_partitioned"),
    (ParallelDims(precision="fp16", device="cpu"), 1, None, "fp16 on CPU"),
    (ParallelDims(zero_stage=0, offload=True), 1, None, "offload needs zero_stage=3"),
    (ParallelDims(zero_stage=2, offload=True), 1, None, "offload needs zero_stage=3"),
    (ParallelDims(pp=2, zero_stage=1, offload=True), 2, None, "offload with pipeline"),
    (ParallelDims(zero_stage=4), 1, None, "choose 0, 1, 2 or 3"),
])
def test_invalid_layouts_are_refused(dims, world, cfg, message):
    with pytest.raises(ValueError, match=message):
        dims.validate(world, cfg)


def test_vocab_message_names_the_padding_and_the_divisors():
    with pytest.raises(ValueError) as err:
        ParallelDims(tp=2).validate(2, get_flavor("huge"))
    assert "valid_vocab_size" in str(err.value) and "[1, 3" in str(err.value)
    assert padded_vocab_size(59457, 2) == 59648 and padded_vocab_size(59457, 2) % 256 == 0


@pytest.mark.parametrize("ds, message", [
    ({"zero_optimization": {"stage": 2}}, "ZeRO stage 2 but the dims say 1"),
    ({"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}, "offload=True"),
    ({"zero_optimization": {"stage": 1}, "fp16": {"enabled": True}}, "enables fp16"),
    ({"zero_optimization": {"stage": 1}}, "pipe_partitioned"),  # DeepSpeed's defaults are True
])
def test_deepspeed_config_must_agree(ds, message):
    dims = ParallelDims(pp=2, tp=2, zero_stage=1, precision="bf16")
    with pytest.raises(ValueError, match=message):
        dims.validate(4, None, ds_config=ds)


def test_config_overrides_round_trip():
    dims = ParallelDims(pp=2, tp=2, zero_stage=1).validate(8, HUGE)
    ds = dims.ds_config_overrides()
    assert ds["pipeline"] == {"pipe_partitioned": False, "grad_partitioned": False}
    dims.validate(8, HUGE, ds_config=ds)
    z3 = ParallelDims(tp=2, zero_stage=3, offload=True).validate(8, HUGE)
    assert z3.ds_config_overrides()["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert str(z3) == "dp4xtp2xpp1/zero3+offload/bf16"
