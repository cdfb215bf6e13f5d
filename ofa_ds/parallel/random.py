"""Random numbers under tensor parallelism.

Three kinds of randomness occur in OFA's forward pass:

1. *Replicated regions* (embedding/residual dropout, drop-path, patch sampling) work on
   tensors every TP rank holds in full. They use torch's default generator, which must be
   seeded identically on the ranks of a TP group (``StepRNG``); then the masks agree
   across TP ranks and are the masks a TP=1 run draws.
2. *Sharded dropout* (the FFN activation dropout, on the F/tp slice after ``fc1``) must
   give each rank its slice of the mask a TP=1 run would draw. ``sharded_dropout`` draws
   one seed from the default generator (the same draw on every rank and at every TP
   degree), draws the *full-size* mask from that seed in a forked generator, and keeps the
   local slice. Result: bit-identical masks at TP=1, 2, 4..., and the default generator
   advances by exactly one draw whatever the degree, so the replicated regions stay in
   step with a TP=1 run.
3. *Attention dropout* happens inside the attention kernel (model code) on the local heads;
   we cannot hand it a slice of a full mask. ``AttentionDropoutRNG`` forks the generator
   for that window with a per-rank seed (again derived from one default-generator draw), so
   heads on different ranks get independent masks: statistically what TP=1 does, but not
   the same bits. OFA's released recipes use attention_dropout = 0.

Across data-parallel replicas and pipeline stages the streams must differ (replicas see
different data; stages run different layers), and a resumed run must draw what the
uninterrupted one drew whatever else touched the generators (a new DataLoader iterator
consumes a draw from the global RNG). ``StepRNG`` therefore reseeds, at the start of every
optimizer step, the default generator and a dedicated patch-sampling generator from
``(seed, step, dp_rank, pp_rank)``: the TP rank is not an input, so 1. and 2. hold; masks
depend only on the step and the replica, never on history.

Why derived seeds instead of a stateful tracker (Megatron's ``CudaRNGStatesTracker``):
activation checkpointing (torch or DeepSpeed) restores the *default* generator before
recomputing a block; a seed derived from it is therefore re-derived identically during
recomputation, while a separate tracker state would have moved on and produced different
masks in the recomputed forward.
"""
from __future__ import annotations

import contextlib
import hashlib

import torch

from ofa_ds.parallel.groups import TPContext

_SEED_RANGE = 2**62


def step_seed(seed: int, step: int, dp_rank: int = 0, pp_rank: int = 0, stream: str = "default") -> int:
    """A 63-bit seed for one optimizer step of one (replica, stage); ``stream`` separates
    independent uses (the default generator, patch sampling). The same on every TP rank."""
    key = f"{seed}/{step}/{dp_rank}/{pp_rank}/{stream}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class StepRNG:
    """The training loop's randomness: ``begin_step(step)`` seeds the default generator
    (dropout, drop-path) and ``patch_generator`` (the encoder's patch sampling) for that
    step of this (data-parallel rank, pipeline stage). ``state_dict`` holds plain tensors
    and ints (loadable with ``torch.load(weights_only=True)``)."""

    def __init__(self, seed: int, dp_rank: int = 0, pp_rank: int = 0, device: torch.device | str = "cpu"):
        self.seed, self.dp_rank, self.pp_rank = seed, dp_rank, pp_rank
        self.device = torch.device(device)
        self.patch_generator = torch.Generator(device=self.device)
        self.step: int | None = None

    def begin_step(self, step: int) -> None:
        self.step = step
        torch.manual_seed(step_seed(self.seed, step, self.dp_rank, self.pp_rank))
        self.patch_generator.manual_seed(step_seed(self.seed, step, self.dp_rank, self.pp_rank, "patches"))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "dp_rank": self.dp_rank, "pp_rank": self.pp_rank,
                "step": -1 if self.step is None else self.step,
                "patch_generator": self.patch_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the patch generator mid-step (same replica only); the next
        ``begin_step`` reseeds everything anyway."""
        if (state["seed"], state["dp_rank"], state["pp_rank"]) == (self.seed, self.dp_rank, self.pp_rank):
            self.patch_generator.set_state(state["patch_generator"])
            self.step = None if state["step"] < 0 else int(state["step"])


def _draw_seed(device: torch.device) -> int:
    """One draw from the default generator of ``device`` (consumes it identically everywhere)."""
    return int(torch.randint(_SEED_RANGE, (1,), device=device).item())


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device):
    """Run the block with the default generator of ``device`` seeded to ``seed``; restore
    it (and the CPU generator) afterwards."""
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device]), torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def sharded_dropout(x: torch.Tensor, p: float, training: bool, tp: TPContext, dim: int = -1) -> torch.Tensor:
    """Dropout on the ``tp.rank``-th slice (along ``dim``) of a tensor that is split evenly
    over the TP group: equals ``F.dropout`` on the full tensor at any TP degree given the
    same default-generator state (one draw consumed)."""
    if not training or p == 0.0:
        return x
    dim = dim % x.dim()
    full_shape = list(x.shape)
    full_shape[dim] *= tp.size
    seed = _draw_seed(x.device)
    with forked_rng(seed, x.device):
        keep = torch.empty(full_shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    keep = keep.narrow(dim, tp.rank * x.shape[dim], x.shape[dim])
    return x * keep / (1.0 - p)


class AttentionDropoutRNG:
    """Forks the generator between a module's ``v_proj`` output and its ``out_proj`` input,
    i.e. around the attention kernel, with a per-TP-rank seed. Installed by the TP plan on
    every attention whose dropout is > 0 when tp > 1."""

    def __init__(self, attention: torch.nn.Module, tp: TPContext):
        self.attention, self.tp = attention, tp
        self._stack: contextlib.ExitStack | None = None
        attention.v_proj.register_forward_hook(self._enter)
        attention.out_proj.register_forward_pre_hook(self._exit)

    def _enter(self, module, args, output):
        if not (self.attention.training and self.attention.dropout > 0):
            return
        self._close()
        seed = _draw_seed(output.device) + 104_729 * self.tp.rank
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(forked_rng(seed % _SEED_RANGE, output.device))

    def _exit(self, module, args):
        self._close()

    def _close(self):
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
