"""The parallel layout of a run, validated before any process group exists.

``ParallelDims(dp, tp, pp, zero_stage, offload)`` names the degrees of data, tensor and
pipeline parallelism and the ZeRO settings. ``validate(world_size, cfg)`` checks them
against the world size and the model, infers one ``-1`` degree, and raises ``ValueError``
with the fix for every layout that DeepSpeed would refuse late, hang on, or (worse) run
silently wrong. Everything here is plain arithmetic: no torch.distributed, no DeepSpeed.

Two regimes (spec parallelism.md §7):

* DP x TP with ZeRO 0-3, optionally offloaded to CPU;
* PP x TP x DP with ZeRO 0/1 only (DeepSpeed's pipeline engine asserts stage < 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ofa_ds.model.config import OFAConfig

PRECISIONS = ("fp32", "bf16", "fp16")


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Smallest size >= vocab_size divisible by ``multiple * tp`` (128-row shards keep the
    vocab matmul on tensor-core friendly shapes)."""
    step = multiple * tp
    return math.ceil(vocab_size / step) * step


def _divisors(n: int, limit: int = 64) -> list[int]:
    return [k for k in range(1, min(n, limit) + 1) if n % k == 0]


@dataclass
class ParallelDims:
    dp: int = -1
    """Data-parallel degree (ZeRO partitions over this axis); -1 = infer from the world size."""
    tp: int = 1
    """Tensor-parallel degree (Megatron-style, innermost: consecutive ranks)."""
    pp: int = 1
    """Pipeline stages (DeepSpeed PipelineModule); outermost axis."""
    zero_stage: int = 1
    offload: bool = False
    """CPU offload of parameters and optimizer states (ZeRO-3 only, as train.offload)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism inside the TP group (not implemented for OFA yet)."""
    pipe_partitioned: bool = False
    """DeepSpeed ``pipeline.pipe_partitioned/grad_partitioned`` (DeepSpeed defaults them to
    True). Our activation tuple carries several differentiable tensors, which the
    partitioned path cannot send, so OFA needs False whenever tp > 1 and pp > 1."""
    precision: str = "bf16"
    device: str = "auto"
    """"cpu", "cuda" or "auto" (cuda when torch sees a GPU)."""

    # -- derived --------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- validation -----------------------------------------------------------------------
    def validate(self, world_size: int, cfg: OFAConfig | None = None,
                 ds_config: dict | None = None) -> "ParallelDims":
        """Resolve ``-1`` degrees and refuse invalid layouts. Returns ``self``.

        ``ds_config`` (optional): the DeepSpeed config dict the run will use; its ZeRO stage,
        offload, fp16 and pipeline sections must agree with these dims.
        """
        self._resolve_degrees(world_size)
        self._check_regime()
        if ds_config is not None:
            self._check_ds_config(ds_config)
        if cfg is not None:
            self._check_model(cfg)
        return self

    def _resolve_degrees(self, world_size: int) -> None:
        degrees = {"dp": self.dp, "tp": self.tp, "pp": self.pp}
        for name, value in degrees.items():
            if value == 0 or value < -1:
                raise ValueError(f"{name}={value}: degrees are positive integers, or -1 to infer one")
        unknown = [name for name, value in degrees.items() if value == -1]
        if len(unknown) > 1:
            raise ValueError(f"only one degree can be -1 (inferred), got {unknown}; set all but one")
        known = math.prod(v for v in degrees.values() if v != -1)
        if unknown:
            if world_size % known:
                raise ValueError(
                    f"world size {world_size} is not divisible by the product of the given degrees "
                    f"({known} = {' x '.join(f'{k}={v}' for k, v in degrees.items() if v != -1)}); "
                    f"change the degrees or launch a multiple of {known} processes")
            setattr(self, unknown[0], world_size // known)
        elif known != world_size:
            raise ValueError(
                f"dp={self.dp} x tp={self.tp} x pp={self.pp} = {known} does not match the world size "
                f"{world_size}; set dp=-1 to infer it, or launch {known} processes")

    def _check_regime(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}: choose 0, 1, 2 or 3")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.pp > 1 and self.zero_stage >= 2:
            raise ValueError(
                f"pipeline parallelism (pp={self.pp}) with ZeRO-{self.zero_stage}: DeepSpeed's pipeline "
                f"engine supports ZeRO 0/1 only. Use zero_stage=1 with pp>1, or pp=1 with ZeRO-2/3 "
                f"(add tp or offload to fit memory)")
        if self.offload and self.pp > 1:
            raise ValueError(
                "CPU offload with pipeline parallelism is not supported here (DeepSpeed has no parameter "
                "offload with pp and we never verified optimizer offload with it); use pp=1 with ZeRO-3 "
                "+ offload, or pp>1 without offload")
        if self.offload and self.zero_stage != 3:
            # The trainer's config (train.offload) and ds_configs/zero3_offload.json offload
            # both parameters and optimizer states, which only ZeRO-3 can.
            raise ValueError(f"offload needs zero_stage=3 (parameters and optimizer states both go to CPU), "
                             f"got zero_stage={self.zero_stage}")
        if self.sequence_parallel and self.pp > 1 and self.pipe_partitioned:
            raise ValueError(
                "sequence parallelism with partitioned pipeline activations: DeepSpeed splits the first "
                "activation across the TP group assuming it is replicated, which is wrong when it is "
                "already sequence-sharded. Set pipe_partitioned=False (DeepSpeed config: "
                '"pipeline": {"pipe_partitioned": false, "grad_partitioned": false})')
        if self.sequence_parallel:
            raise ValueError(
                "sequence_parallel=True is not implemented for OFA: its dropout and drop-path calls sit in "
                "the model files and would need an RNG hook per layer; set sequence_parallel=False")
        if self.tp > 1 and self.pp > 1 and self.pipe_partitioned:
            raise ValueError(
                "pipe_partitioned=True with tp>1 and pp>1: OFA's activation tuple carries several "
                "differentiable tensors (encoder output, position biases) and DeepSpeed's partitioned "
                'path can only send one. Set "pipeline": {"pipe_partitioned": false, '
                '"grad_partitioned": false} in the DeepSpeed config (see ds_config_overrides())')
        if self.precision == "fp16" and self._device() == "cpu":
            raise ValueError(
                "fp16 on CPU: DeepSpeed's CPU accelerator refuses it (no oneDNN fp16 here); "
                "use precision='bf16' or 'fp32' on CPU and keep fp16 for GPU runs")

    def _check_model(self, cfg: OFAConfig) -> None:
        for side, heads in (("encoder", cfg.encoder_heads), ("decoder", cfg.decoder_heads)):
            if heads % self.tp:
                raise ValueError(
                    f"{side}_heads={heads} is not divisible by tp={self.tp}: every rank must own whole "
                    f"heads; pick tp in {_divisors(heads)}")
        if cfg.ffn_dim % self.tp:
            raise ValueError(f"ffn_dim={cfg.ffn_dim} is not divisible by tp={self.tp}; "
                             f"pick tp in {_divisors(cfg.ffn_dim)}")
        if cfg.vocab_size % self.tp:
            raise ValueError(
                f"vocab_size={cfg.vocab_size} is not divisible by tp={self.tp}: pad the vocabulary to "
                f"{padded_vocab_size(cfg.vocab_size, self.tp)} (padded_vocab_size(); pass the real size as "
                f"valid_vocab_size to the vocab-parallel loss so the padding rows never get probability), "
                f"or pick tp in {_divisors(cfg.vocab_size)}")
        n_layers = cfg.encoder_layers + cfg.decoder_layers
        if self.pp > n_layers:
            raise ValueError(
                f"pp={self.pp} pipeline stages but the model has only {n_layers} transformer layers "
                f"({cfg.encoder_layers} encoder + {cfg.decoder_layers} decoder); use pp <= {n_layers}")

    def _check_ds_config(self, ds: dict) -> None:
        zero = ds.get("zero_optimization", {}) or {}
        stage = int(zero.get("stage", 0))
        if stage != self.zero_stage:
            raise ValueError(f"DeepSpeed config has ZeRO stage {stage} but the dims say {self.zero_stage}; "
                             f"make them agree (the dims are validated, the config is what runs)")
        offloaded = any((zero.get(k) or {}).get("device", "none") not in ("none", None)
                        for k in ("offload_optimizer", "offload_param"))
        if offloaded != self.offload:
            raise ValueError(f"DeepSpeed config offload={offloaded} but the dims say offload={self.offload}")
        if (ds.get("fp16") or {}).get("enabled", False) and self.precision != "fp16":
            raise ValueError("DeepSpeed config enables fp16 but the dims say precision="
                             f"{self.precision!r}; set precision='fp16' so it is validated")
        if self.precision == "fp16" and not (ds.get("fp16") or {}).get("enabled", False):
            raise ValueError("dims say fp16 but the DeepSpeed config does not enable it")
        pipe = ds.get("pipeline", {}) or {}
        partitioned = bool(pipe.get("pipe_partitioned", True)) or bool(pipe.get("grad_partitioned", True))
        if self.pp > 1 and self.tp > 1 and partitioned:
            self.pipe_partitioned = True
            self._check_regime()  # raises with the explanation

    def ds_config_overrides(self) -> dict:
        """The DeepSpeed config keys these dims imply (merge into the recipe)."""
        out: dict = {"zero_optimization": {"stage": self.zero_stage}}
        if self.offload:
            out["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            if self.zero_stage == 3:
                out["zero_optimization"]["offload_param"] = {"device": "cpu"}
        if self.pp > 1:
            out["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
        if self.precision == "bf16":
            out["bf16"] = {"enabled": True}
        elif self.precision == "fp16":
            out["fp16"] = {"enabled": True}
        return out

    def __str__(self) -> str:
        extra = ("+offload" if self.offload else "") + ("+sp" if self.sequence_parallel else "")
        return f"dp{self.dp}xtp{self.tp}xpp{self.pp}/zero{self.zero_stage}{extra}/{self.precision}"
