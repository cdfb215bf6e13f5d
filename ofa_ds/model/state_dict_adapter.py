"""State-dict names and configs: ofa-ds <-> fairseq OFA <-> OFA-HF.

Our module names are fairseq's, so fairseq <-> ofa-ds only adds or removes the
deterministic buffers. HF renames a few layer norms and the cross-attention
(spec ofa_model.md §5.2).
"""
from __future__ import annotations

import argparse
import re

import torch

from ofa_ds.config.flavors import RESNET50, RESNET101, RESNET152
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.position import code_position_index, image_bucket_table, token_bucket_table

TIED_NAMES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
              "decoder.output_projection.weight")
RESNET_TYPES = {RESNET50: "resnet50", RESNET101: "resnet101", RESNET152: "resnet152"}
RESNET_LAYERS = {name: layers for layers, name in RESNET_TYPES.items()}

# Module names that differ inside ``<stack>.layers.<i>.``: (stack, fairseq name, HF name).
# One table serves both directions; every other key is identical.
_LAYER_RENAMES = [
    ("encoder", "attn_ln", "self_attn_mid_layer_norm"),
    ("encoder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "self_attn_ln", "self_attn_mid_layer_norm"),
    ("decoder", "encoder_attn", "cross_attn"),
    ("decoder", "encoder_attn_layer_norm", "cross_attn_layer_norm"),
    ("decoder", "cross_attn_ln", "cross_attn_mid_layer_norm"),
]
_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.([^.]+)\.(.+)$")


def _rename(state: dict, to_hf: bool) -> dict:
    table = {(stack, fs if to_hf else hf): (hf if to_hf else fs) for stack, fs, hf in _LAYER_RENAMES}
    out = {}
    for key, value in state.items():
        m = _LAYER_KEY.match(key)
        if m and (m.group(1), m.group(3)) in table:
            key = f"{m.group(1)}.layers.{m.group(2)}.{table[m.group(1), m.group(3)]}.{m.group(4)}"
        out[key] = value
    return out


def fairseq_to_hf_names(state: dict) -> dict:
    return _rename(state, to_hf=True)


def hf_to_fairseq_names(state: dict) -> dict:
    state = {k.removeprefix("model."): v for k, v in state.items()}
    # Wrappers of early HF revisions; not model weights.
    state.pop("lm_head.weight", None)
    state.pop("final_logits_bias", None)
    return _rename(state, to_hf=False)


# --- derived buffers ----------------------------------------------------------------------
def derived_buffers(cfg: OFAConfig, code_tail: int) -> dict[str, torch.Tensor]:
    token = token_bucket_table(cfg.token_bucket_size)
    image = image_bucket_table(cfg.image_bucket_size)
    return {
        "encoder.token_rp_bucket": token, "decoder.token_rp_bucket": token,
        "encoder.image_rp_bucket": image, "decoder.image_rp_bucket": image,
        "decoder.image_position_idx": code_position_index(cfg.code_image_size, cfg.image_bucket_size,
                                                          tail=code_tail),
    }


def strip_derived_buffers(state: dict, cfg: OFAConfig, source: str) -> dict:
    """Remove the buffers we compute ourselves, after checking any that are present.

    ``image_position_idx`` differs in its padded tail between fairseq (769) and HF (768),
    so only the part both agree on is compared.
    """
    expected = derived_buffers(cfg, code_tail=769)
    state = dict(state)
    for name in ("encoder.version", "decoder.version"):
        state.pop(name, None)
    for name, want in expected.items():
        got = state.pop(name, None)
        if got is None:
            continue
        n = min(len(got), len(want)) if got.dim() == 1 else None
        same = (torch.equal(got[:n].long(), want[:n]) if n is not None
                else got.shape == want.shape and torch.equal(got.long(), want))
        if not same:
            raise ValueError(f"{source}: buffer {name} differs from the one computed for this config "
                             f"(shape {tuple(got.shape)}); the checkpoint was made with other "
                             "bucket sizes or positions than its config says")
    return state


def tie_embeddings(state: dict, source: str) -> dict:
    """Fill the three tied embedding names from whichever are present (checking they agree)."""
    present = [state[n] for n in TIED_NAMES if n in state]
    if not present:
        raise ValueError(f"{source}: no token embedding found (expected one of {TIED_NAMES})")
    for other in present[1:]:
        if other.shape != present[0].shape or not torch.equal(other, present[0]):
            raise ValueError(f"{source}: the tied embeddings {TIED_NAMES} hold different values; "
                             "untied input/output embeddings are not supported")
    state = dict(state)
    for name in TIED_NAMES:
        state[name] = present[0]
    return state


# --- configs ------------------------------------------------------------------------------
def _count_layers(state: dict, prefix: str) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(rf"^{prefix}\.layers\.(\d+)\.", k))}
    return len(ids)


def infer_config_from_state(state: dict) -> dict:
    """Architecture facts readable from tensor shapes (spec ofa_model.md §1.4)."""
    emb = next(state[n] for n in TIED_NAMES if n in state)
    blocks = tuple(
        len({int(m.group(1)) for k in state
             if (m := re.match(rf"^encoder\.embed_images\.layer{s}\.(\d+)\.", k))})
        for s in (1, 2, 3))
    image_pos_rows = state["encoder.embed_image_positions.weight"].shape[0]
    return dict(
        vocab_size=emb.shape[0], embed_dim=emb.shape[1],
        ffn_dim=state["encoder.layers.0.fc1.weight"].shape[0],
        encoder_layers=_count_layers(state, "encoder"), decoder_layers=_count_layers(state, "decoder"),
        encoder_heads=state["encoder.token_rel_pos_table_list.0.weight"].shape[1],
        decoder_heads=state["decoder.token_rel_pos_table_list.0.weight"].shape[1],
        token_bucket_size=(state["encoder.token_rel_pos_table_list.0.weight"].shape[0] + 1) // 2,
        image_bucket_size=round((image_pos_rows - 1) ** 0.5),
        max_positions=state["encoder.embed_positions.weight"].shape[0] - 2,
        resnet_layers=blocks,
        scale_attn="encoder.layers.0.attn_ln.weight" in state,
        scale_fc="encoder.layers.0.ffn_layernorm.weight" in state,
        scale_heads="encoder.layers.0.self_attn.c_attn" in state,
        scale_resids="encoder.layers.0.w_resid" in state,
        add_type_embedding="encoder.type_embedding.weight" in state,
        layernorm_embedding="encoder.layernorm_embedding.weight" in state,
        patch_layernorm_embedding="encoder.patch_layernorm_embedding.weight" in state,
        code_layernorm_embedding="decoder.code_layernorm_embedding.weight" in state,
        normalize_before="encoder.layer_norm.weight" in state,
    )


# fairseq arg name -> OFAConfig field, for flags that shapes cannot tell.
_FAIRSEQ_FLAGS = {
    "disable_entangle": "disable_entangle", "attn_scale_factor": "attn_scale_factor",
    "no_scale_embedding": "no_scale_embedding", "code_image_size": "code_image_size",
    "dropout": "dropout", "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout", "encoder_drop_path_rate": "encoder_drop_path_rate",
    "decoder_drop_path_rate": "decoder_drop_path_rate", "resnet_drop_path_rate": "resnet_drop_path_rate",
}


def config_from_fairseq(ckpt: dict, state: dict) -> OFAConfig:
    args = None
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and cfg.get("model") is not None:
        args = cfg["model"]
    elif ckpt.get("args") is not None:
        args = ckpt["args"]
    get = (lambda k: getattr(args, k, None)) if not isinstance(args, dict) else args.get
    fields = infer_config_from_state(state)
    for arg, field in _FAIRSEQ_FLAGS.items():
        value = get(arg) if args is not None else None
        if value is not None:
            fields[field] = value
    task = cfg.get("task") if isinstance(cfg, dict) else None
    task = task or {}
    task_get = (lambda k: getattr(task, k, None)) if not isinstance(task, dict) else task.get
    for key in ("patch_image_size", "num_bins", "code_dict_size"):
        if task_get(key) is not None:
            fields[key] = int(task_get(key))
    arch = (get("arch") or get("_name")) if args is not None else None
    fields["extra"] = {"source_arch": arch} if arch else {}
    return OFAConfig(**fields)


def fairseq_cfg(cfg: OFAConfig) -> dict:
    """The ``cfg`` block of a fairseq checkpoint that upstream OFA can rebuild the model from."""
    flavor = {256: "ofa_tiny", 512: "ofa_medium", 768: "ofa_base", 1024: "ofa_large", 1280: "ofa_huge"}
    arch = cfg.extra.get("source_arch") or flavor.get(cfg.embed_dim, "ofa_large")
    model_args = argparse.Namespace(
        _name=arch, arch=arch,
        encoder_embed_dim=cfg.embed_dim, decoder_embed_dim=cfg.embed_dim,
        encoder_ffn_embed_dim=cfg.ffn_dim, decoder_ffn_embed_dim=cfg.ffn_dim,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.encoder_heads, decoder_attention_heads=cfg.decoder_heads,
        encoder_normalize_before=cfg.normalize_before, decoder_normalize_before=cfg.normalize_before,
        encoder_learned_pos=True, decoder_learned_pos=True,
        layernorm_embedding=cfg.layernorm_embedding, patch_layernorm_embedding=cfg.patch_layernorm_embedding,
        code_layernorm_embedding=cfg.code_layernorm_embedding, add_type_embedding=cfg.add_type_embedding,
        share_all_embeddings=True, share_decoder_input_output_embed=True,
        no_scale_embedding=cfg.no_scale_embedding, scale_attn=cfg.scale_attn, scale_fc=cfg.scale_fc,
        scale_heads=cfg.scale_heads, scale_resids=cfg.scale_resids, disable_entangle=cfg.disable_entangle,
        entangle_position_embedding=False, attn_scale_factor=cfg.attn_scale_factor,
        token_bucket_size=cfg.token_bucket_size, image_bucket_size=cfg.image_bucket_size,
        max_source_positions=cfg.max_positions, max_target_positions=cfg.max_positions,
        code_image_size=cfg.code_image_size, activation_fn="gelu",
        resnet_type=_fairseq_resnet_type(cfg),
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, encoder_drop_path_rate=cfg.encoder_drop_path_rate,
        decoder_drop_path_rate=cfg.decoder_drop_path_rate, resnet_drop_path_rate=cfg.resnet_drop_path_rate,
        freeze_resnet=False, sync_bn=False,
    )
    task = {"_name": "unify_task", "patch_image_size": cfg.patch_image_size,
            "num_bins": cfg.num_bins, "code_dict_size": cfg.code_dict_size,
            "max_image_size": 512, "bpe_dir": None}
    return {"model": model_args, "task": task, "criterion": {"_name": "adjust_label_smoothed_cross_entropy"}}


def hf_resnet_type(cfg: OFAConfig) -> str:
    """OFA-HF builds its ResNet from a name; a depth it has no name for cannot be written."""
    layers = tuple(cfg.resnet_layers)
    if layers in RESNET_TYPES:
        return RESNET_TYPES[layers]
    known = ", ".join(f"{name} {layers}" for layers, name in RESNET_TYPES.items())
    raise ValueError(f"this model's ResNet has {layers} blocks per stage; OFA-HF builds only "
                     f"{known} (resnet_type), so it would load this checkpoint with the ResNet's weights "
                     "missing. Write it --to ofa-ds or --to fairseq instead (ofa-ds reads the depth from the "
                     "weights).")


def _fairseq_resnet_type(cfg: OFAConfig) -> str:
    # Upstream OFA refuses an unknown resnet_type (NotImplementedError) instead of building a
    # wrong one; ofa-ds reads the depth from the weights and ignores the name.
    layers = tuple(cfg.resnet_layers)
    return RESNET_TYPES.get(layers) or "custom_" + "_".join(map(str, layers))


def hf_config(cfg: OFAConfig, torch_dtype: str = "float32") -> dict:
    return {
        "model_type": "ofa", "architectures": ["OFAModel"], "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_positions, "d_model": cfg.embed_dim,
        "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
        "num_hidden_layers": cfg.encoder_layers,
        "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim,
        "encoder_attention_heads": cfg.encoder_heads, "decoder_attention_heads": cfg.decoder_heads,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "activation_function": "gelu",
        "dropout": cfg.dropout, "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout, "init_std": 0.02, "classifier_dropout": 0.0,
        "scale_embedding": not cfg.no_scale_embedding, "pad_token_id": cfg.pad,
        "bos_token_id": cfg.bos, "eos_token_id": cfg.eos, "forced_eos_token_id": cfg.eos,
        "decoder_start_token_id": cfg.bos, "is_encoder_decoder": True, "use_cache": True,
        "encoder_normalize_before": cfg.normalize_before, "decoder_normalize_before": cfg.normalize_before,
        "normformer": cfg.scale_attn and cfg.scale_fc and cfg.scale_heads,
        "encoder_drop_path_rate": cfg.encoder_drop_path_rate,
        "decoder_drop_path_rate": cfg.decoder_drop_path_rate,
        "resnet_drop_path_rate": cfg.resnet_drop_path_rate,
        "layernorm_embedding": cfg.layernorm_embedding,
        "patch_layernorm_embedding": cfg.patch_layernorm_embedding,
        "code_layernorm_embedding": cfg.code_layernorm_embedding,
        "resnet_type": hf_resnet_type(cfg), "resnet_model_path": None,
        "token_bucket_size": cfg.token_bucket_size, "image_bucket_size": cfg.image_bucket_size,
        "add_type_embedding": cfg.add_type_embedding, "share_decoder_input_output_embed": True,
        "attn_scale_factor": cfg.attn_scale_factor, "code_image_size": cfg.code_image_size,
        "entangle_position_embedding": False, "torch_dtype": torch_dtype,
        # Not HF fields; carried so that ofa-ds -> HF -> ofa-ds keeps everything.
        "ofa_ds": {"patch_image_size": cfg.patch_image_size, "num_bins": cfg.num_bins,
                   "code_dict_size": cfg.code_dict_size, "resnet_layers": list(cfg.resnet_layers),
                   "disable_entangle": cfg.disable_entangle, "extra": cfg.extra},
    }


def config_from_hf(hf: dict, state: dict) -> OFAConfig:
    fields = infer_config_from_state(state)
    fields.update(
        attn_scale_factor=float(hf.get("attn_scale_factor", 2.0)),
        code_image_size=int(hf.get("code_image_size", 128)),
        no_scale_embedding=not hf.get("scale_embedding", False),
        dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
        activation_dropout=hf.get("activation_dropout", 0.0),
        encoder_drop_path_rate=hf.get("encoder_drop_path_rate", 0.0),
        decoder_drop_path_rate=hf.get("decoder_drop_path_rate", 0.0),
        resnet_drop_path_rate=hf.get("resnet_drop_path_rate", 0.0),
        pad=hf.get("pad_token_id", 1), bos=hf.get("bos_token_id", 0), eos=hf.get("eos_token_id", 2),
    )
    ours = hf.get("ofa_ds", {})
    for key in ("patch_image_size", "num_bins", "code_dict_size", "disable_entangle", "extra"):
        if key in ours:
            fields[key] = ours[key]
    return OFAConfig(**fields)
