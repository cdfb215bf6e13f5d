"""The typed training configuration: one TOML file plus dotted command-line overrides.

Precedence: command line > file > the defaults below. Every field has a docstring; the
DeepSpeed JSON is generated from this config and a template in ``ds_configs/`` (see
``ofa_ds.engine.ds_config``), so batch sizes, clipping and precision have one source.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSection:
    flavor: str = "tiny"
    """Size: test, tiny, medium, base, large, huge (ofa_ds/config/flavors.py)."""
    init_from: str | None = None
    """Continued pretraining / finetuning: a fairseq .pt, OFA-HF dir or ofa-ds dir. Loads the
    weights only; optimizer, schedule and data position start fresh."""
    patch_image_size: int | None = None
    """With init_from: interpolate the image position embeddings to this image size."""
    vocab_size: int | None = None
    """Defaults to the vocabulary's size; must equal it."""
    dropout: float = 0.1
    attention_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.1
    decoder_drop_path_rate: float = 0.1
    resnet_drop_path_rate: float = 0.0
    freeze_resnet: bool = False
    """Freeze the ResNet: no gradients, BatchNorm on running statistics."""
    freeze_batchnorm: bool = False
    """Keep every BatchNorm on running statistics (trainable affine), for small per-GPU batches."""
    activation_checkpointing: bool = False
    """Recompute encoder/decoder layers in the backward pass (saves activation memory)."""
    moe_layers: str | None = None
    """Mixture-of-experts FFN in these layers, e.g. "encoder:1,3;decoder:all" (None: dense)."""
    moe_num_experts: int = 8
    moe_top_k: int = 1
    moe_capacity_factor: float = 1.0
    moe_backend: str = "deepspeed"
    """deepspeed (default, runs on CPU) | megablocks (GPU clusters with megablocks installed)."""
    moe_ep_size: int = 1
    """Expert parallelism: experts split over groups of this many data-parallel ranks."""
    moe_aux_weight: float = 0.01
    """Weight of the load-balancing loss (mean over forwards)."""
    attention_impl: str = "auto"
    """reference | sdpa | triton | auto (the kernel registry's per-device choice; ofa-ds env)."""
    rel_pos_bias: str = "auto"
    """Relative-position table lookup: auto (gather on CUDA) | embedding | gather (a scatter-add
    backward, no sort)."""
    channels_last: bool = False
    """ResNet convolutions on NHWC activations (faster cuDNN kernels; same numbers)."""
    mixed_batchnorm: bool = False
    """BatchNorm on bf16/fp16 activations with float32 statistics, without the cast copies."""
    compile: str = "none"
    """torch.compile regions: none | layers (each encoder/decoder layer) | resnet | all."""
    cuda_graphs: bool = False
    """Replay the compiled regions as CUDA graphs (compile mode reduce-overhead; CUDA only)."""
    cudnn_benchmark: bool = False
    """cuDNN convolution autotuning (image sizes are fixed per group)."""


@dataclass
class DataSection:
    root: str = "sample_data"
    """Directory that the relative paths below are resolved against."""
    vocab_dir: str = "vocab"
    """Directory with encoder.json, vocab.bpe, dict.txt (OFA's utils/BPE, or ofa-ds build-vocab)."""
    vision_language: str = "pretrain/vision_language_examples.tsv"
    text: str | None = "pretrain/text_examples.tsv"
    image: str | None = "pretrain/image_examples.tsv"
    detection: str | None = "pretrain/detection_examples.tsv"
    negative_sample_dir: str | None = "pretrain/negative_sample"
    patch_image_size: int = 384
    """VL image side (the extras images are 2 x code_image_size)."""
    code_image_size: int = 128
    sample_patch_num: int | None = 196
    """Patches kept per VL image in pair batches (None: all)."""
    max_src_length: int = 80
    max_tgt_length: int = 30
    max_image_size: int = 512
    """Box coordinates are divided by this before quantisation into <bin_i> (OFA: 512)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    strict: bool = False
    """Make the first bad row fatal instead of skipping and counting it."""
    weights: dict = field(default_factory=dict)
    """Stream weights, e.g. {vision_language = 16, text = 2, image = 1, detection = 1}; empty = OFA's."""


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    """Decoupled (AdamW), on all parameters as in OFA."""
    clip_norm: float = 5.0
    """Global gradient-norm clip (OFA: 5.0 pretraining, 1.0 finetuning); 0 disables."""
    warmup_ratio: float = 0.01
    """Linear warm-up over this share of max_steps, then linear decay to end_lr."""
    end_lr: float = 0.0


@dataclass
class TrainSection:
    seed: int = 7
    micro_batch: int = 8
    """Per-rank micro-batch, in vision-language rows (a multiple of 8 for pretraining)."""
    grad_accum: int = 1
    max_steps: int = 100
    """Optimizer steps."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (fp16 needs a GPU)."""
    zero_stage: int = 0
    offload: bool = False
    """ZeRO-3 with parameters and optimizer state offloaded to CPU."""
    out_dir: str = "runs/pretrain"
    log_every: int = 10
    save_every: int = 50
    keep_last: int = 3
    """Checkpoints to keep (older ones are deleted after a newer one is complete)."""
    keep_best: bool = True
    """Finetuning: export the model with the best valid metric so far to out_dir/best
    (ofa-ds format, with best.json naming the step and metric)."""
    resume: bool = False
    """Continue from out_dir/checkpoints/latest (same losses as an uninterrupted run); the
    layout (parallel.tp/pp, world size, zero_stage) may differ when the checkpoint has its
    layout-free copy."""
    trust_checkpoint_pickle: bool = False
    """Resume with full pickle (torch.load weights_only=False), which can run code from the files:
    only for trusted checkpoints whose types are outside the allow-list (ofa_ds/engine/safe_load.py)."""
    drift_check_every: int = 0
    """With parallel.tp > 1: every N steps assert that replicated parameters (LayerNorms,
    biases, the ResNet) are bit-identical across the TP ranks (0: never)."""
    layout_free_checkpoint: bool = True
    """Also save fp32 weights + Adam moments under single-device names (checkpoints/step_N/
    portable/): lets --resume change TP/PP/DP/ZeRO and `ofa-ds convert` export step_N."""
    tensorboard: bool = True
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project (needs `pip install wandb`; not imported
    unless set). The run is named after out_dir; WANDB_MODE=offline etc. work as usual."""
    image_log_every: int = 50
    """Steps between TensorBoard images of one input with its target."""
    progress_bar: bool = True
    export_format: str | None = "ofa-ds"
    """Write the final model to out_dir/final in this format (ofa-ds | hf | fairseq; None: skip)."""
    optimizer: str = "auto"
    """auto | torch_adamw | torch_fused_adamw | deepspeed_fused_adam | deepspeed_cpu_adam
    (auto: the table in ofa_ds/kernels/optim.py; `ofa-ds env` shows the choice)."""
    deepspeed_template: str = "auto"
    """A file name in ds_configs/, or the path of your own DeepSpeed JSON (also --deepspeed_config
    FILE); auto: from zero_stage and offload. ofa-ds fills in batch, clipping, ZeRO stage, offload,
    precision and optimizer (OWNED_KEYS in ofa_ds/engine/ds_config.py) and refuses a file that sets
    them to other values; its other keys reach DeepSpeed as written."""


@dataclass
class TaskSection:
    name: str = "pretrain"
    """A registered task (``ofa_ds/tasks/__init__.py``: pretrain, caption, vqa_gen, snli_ve, cola,
    mnli, mrpc, qnli, qqp, rte, sst2, image_classify, ...)."""
    train: str | None = None
    """Finetuning splits: TSV paths relative to data.root, in the task's OFA column layout
    (None: the task's default under finetune/<task>/). valid is scored in training and by
    ``ofa-ds evaluate --split valid``; test only by ``ofa-ds evaluate --split test``."""
    valid: str | None = None
    test: str | None = None
    options: dict = field(default_factory=dict)
    """The task's own typed options, as a [task.options] table (e.g. ans2label, prompt_type,
    val_inference); each task documents them in its ``Options`` dataclass (ofa_ds/tasks/<task>.py)."""
    eval_every: int = 0
    """Score the valid split every this many steps (0: at every checkpoint save)."""
    eval_batch: int = 8
    """Rows per evaluation batch (per data-parallel rank)."""
    valid_max_rows: int = 0
    """Score only the first n valid rows during training (0: all; ofa-ds evaluate scores all)."""
    label_smoothing: float = 0.0
    extras_weight: float = 1.0
    """Weight of the extras group (text/image infilling, detection) in pretraining."""
    ignore_eos: bool = False
    constraint_range: str | None = None
    """"start,end": only ids 0-3 and [start, end) get probability (e.g. "50265,58457" for image codes)."""
    drop_worst_ratio: float = 0.0
    drop_worst_after: int = 0
    eval_beam: int = 5
    eval_max_len: int = 16


@dataclass
class ParallelSection:
    tp: int = 1
    """Tensor-parallel degree."""
    pp: int = 1
    """Pipeline stages (ZeRO-0/1 only)."""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    task: TaskSection = field(default_factory=TaskSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
