"""Self-critical sequence training for captioning, stage 2 (spec ofa_data_and_tasks.md §4.4).

Per image, the K beams of a beam search (eval mode, no grad) are the samples. Each is scored
by CIDEr-D against the image's references with the cached training document frequencies;
the baseline of beam j is the mean score of the *other* K-1 beams of its image, and
``reward_j = score_j - baseline_j``. The policy-gradient loss is
``-sum_j reward_j * sum_t log p(y_jt)`` over the non-pad tokens of the beams, teacher-forced
on ``[bos ; beam without eos]`` with the model in train mode (as OFA: BatchNorm then uses the
batch statistics even with dropout 0).

Shape legend: B images, K beams per image, N = B*K samples, T target length, V vocabulary.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ofa_ds.tasks.cider import DocumentFrequencies, cider_d_scores, scst_sentence


def scst_rewards(hypotheses: list[str], references: list[list[str]], df: DocumentFrequencies
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [N], baseline [B, K], reward [N]) in float64; ``hypotheses`` image-major
    (K per image), ``references`` one list per image."""
    B = len(references)
    if B == 0 or len(hypotheses) % B:
        raise ValueError(f"{len(hypotheses)} hypotheses do not split evenly over {B} images")
    K = len(hypotheses) // B
    if K < 2:
        raise ValueError("SCST's leave-one-out baseline needs at least 2 samples per image")
    refs = [[scst_sentence(r) for r in rs] for rs in references]
    scores = np.array(cider_d_scores([scst_sentence(h) for h in hypotheses],
                                     [refs[i // K] for i in range(len(hypotheses))], document_frequencies=df),
                      dtype=np.float64)
    baseline, reward = leave_one_out(scores, K)
    return scores, baseline, reward


def leave_one_out(scores_N: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(baseline [B, k], reward [N]): each sample's baseline is the mean score of the other
    k-1 samples of its input."""
    s_BK = np.asarray(scores_N, dtype=np.float64).reshape(-1, k)
    baseline = (s_BK.sum(1, keepdims=True) - s_BK) / (k - 1)
    return baseline, (s_BK - baseline).reshape(-1)


def teacher_forcing_pair(samples: list[torch.Tensor], *, bos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input [N, T], target [N, T]): ``[bos ; sample without its eos]`` and the
    sample itself, right-padded with pad."""
    target = pad_sequence(list(samples), batch_first=True, padding_value=pad)
    prev = pad_sequence([torch.cat([s.new_tensor([bos]), s[:-1]]) for s in samples], batch_first=True,
                        padding_value=pad)
    return prev, target


def with_scst_targets(batch: dict, samples: list[torch.Tensor], reward_N: np.ndarray, *, bos: int,
                      pad: int, **logged: float) -> dict:
    """A copy of ``batch`` that carries the sampled sequences as teacher-forcing pairs, their
    rewards (and ``logged`` figures such as the mean score) under ``"scst"``; ``ntokens`` becomes
    the sampled-token count, the step's normaliser (OFA's ``sample_size``)."""
    prev, target = teacher_forcing_pair([s.cpu() for s in samples], bos=bos, pad=pad)
    device = batch["target"].device
    batch = dict(batch)
    batch["scst"] = {"prev_output_tokens": prev.to(device), "target": target.to(device),
                     "reward": torch.from_numpy(reward_N).to(device), **logged}
    batch["ntokens"] = int(target.ne(pad).sum())
    return batch


def scst_loss(logits_NTV: torch.Tensor, target_NT: torch.Tensor, reward_N: torch.Tensor, *, pad: int,
              constraint_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """(summed loss, non-pad token count): ``-sum reward * log p(target)`` over non-pad tokens."""
    logits = logits_NTV.float()
    if constraint_range is not None:
        start, end = constraint_range
        logits = logits.clone()
        logits[..., 4:start] = float("-inf")
        logits[..., end:] = float("-inf")
    lprobs = F.log_softmax(logits, dim=-1).gather(-1, target_NT.unsqueeze(-1)).squeeze(-1)   # [N, T]
    keep = target_NT.ne(pad)
    loss = -(lprobs * reward_N.to(lprobs.dtype).unsqueeze(-1)).masked_fill(~keep, 0.0)
    return loss.sum(), int(keep.sum())


@contextlib.contextmanager
def eval_mode(model):
    """Every module in eval mode inside the block, each module's own flag restored after
    (so BatchNorm layers kept frozen in eval mode stay so)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def sample_beams(generator, net_input: dict) -> list[torch.Tensor]:
    """All K beam-search hypotheses of each image (image-major, best first), each ending in
    eos, from a model in eval mode without gradients."""
    with eval_mode(generator.model), torch.no_grad():
        hyps = generator.generate(net_input["src_tokens"], net_input["src_lengths"],
                                  patch_images=net_input.get("patch_images"),
                                  patch_masks=net_input.get("patch_masks"))
    K = generator.cfg.beam
    out = []
    for i, h in enumerate(hyps):
        if len(h) < K:
            raise RuntimeError(f"beam search returned {len(h)} hypotheses for image {i}, expected {K}")
        out += [x["tokens"] for x in h[:K]]
    return out


def repeat_net_input(net_input: dict, k: int, prev_output_tokens: torch.Tensor) -> dict:
    """The model inputs for k decoder rows per image (image-major): each image is encoded once
    and its encoder output repeated (OFA repeats the images k times; train-mode BatchNorm
    sees the same batch statistics either way, and the gradients are the same sums)."""
    out = {key: v for key, v in net_input.items() if key != "prev_output_tokens"}
    if out.get("code_masks") is not None:
        out["code_masks"] = out["code_masks"].repeat_interleave(k, dim=0)
    out["prev_output_tokens"] = prev_output_tokens
    out["decoder_rows_per_input"] = k
    return out
