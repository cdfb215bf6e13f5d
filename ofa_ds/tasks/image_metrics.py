"""Scores of generated images (spec §5.5): CLIP similarity to the caption, FID and Inception Score.

* ``ClipScorer``: cosine of CLIP's image and text embeddings (a Hugging Face ``CLIPModel``
  directory, e.g. openai/clip-vit-base-patch16 as OFA uses). OFA ranks its 24 samples per
  caption by it and reports the mean top similarity ("CLIP score").
* ``InceptionFeatures``: the 2048-d pool features and class logits of Inception-v3, from a
  state dict in torchvision's layout. With 1008 classes (pytorch-fid's port of the TF
  ``pt_inception-2015-12-05`` weights, the network behind published FIDs) the branch pools use
  that network's pooling (averages that ignore padding; a max pool in the last block), so the
  features are pytorch-fid's; with torchvision's own 1000-class ImageNet weights, torchvision's
  network (numbers not comparable to published FIDs).
* ``frechet_distance`` / ``inception_score``: the standard formulas, in float64, without scipy
  (the matrix square root's trace from a symmetric eigendecomposition).

Reference statistics for FID are pytorch-fid's ``.npz`` (``mu``, ``sigma``), e.g. the COCO
ground-truth statistics OFA provides; ``python -m ofa_ds.tasks.image_metrics IMAGE_DIR
--inception W.pth --out stats.npz`` builds them from a folder of images.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# -- CLIP ------------------------------------------------------------------------------------
class ClipScorer:
    """Cosine similarity of CLIP's image and text embeddings, per (image, caption) pair."""

    def __init__(self, model, tokenizer, image_size: int, mean, std):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, path) -> "ClipScorer":
        try:
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer
        except ImportError as err:
            raise RuntimeError("CLIP scores need transformers (pip install transformers)") from err
        proc = CLIPImageProcessor.from_pretrained(path)
        size = proc.crop_size["height"] if isinstance(proc.crop_size, dict) else proc.crop_size
        return cls(CLIPModel.from_pretrained(path), CLIPTokenizer.from_pretrained(path), size,
                   proc.image_mean, proc.image_std)

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """images in [0, 1] -> [B] cosine similarities (float64)."""
        x = F.interpolate(images_B3HW.float(), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False).clamp(0, 1)
        x = (x - self.mean) / self.std
        text = self.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        img = self.model.get_image_features(pixel_values=x)
        txt = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        return F.cosine_similarity(img, txt, dim=-1).double()


# -- Inception-v3 ----------------------------------------------------------------------------
def _avg_pool_unpadded(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _mixed_a(m, x):
    b5 = m.branch5x5_2(m.branch5x5_1(x))
    b3 = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return torch.cat([m.branch1x1(x), b5, b3, m.branch_pool(_avg_pool_unpadded(x))], 1)


def _mixed_c(m, x):
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    d = x
    for layer in (m.branch7x7dbl_1, m.branch7x7dbl_2, m.branch7x7dbl_3, m.branch7x7dbl_4, m.branch7x7dbl_5):
        d = layer(d)
    return torch.cat([m.branch1x1(x), b7, d, m.branch_pool(_avg_pool_unpadded(x))], 1)


def _mixed_e(m, x, pool):
    b3 = m.branch3x3_1(x)
    b3 = torch.cat([m.branch3x3_2a(b3), m.branch3x3_2b(b3)], 1)
    d = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    d = torch.cat([m.branch3x3dbl_3a(d), m.branch3x3dbl_3b(d)], 1)
    return torch.cat([m.branch1x1(x), b3, d, m.branch_pool(pool(x))], 1)


class InceptionFeatures(torch.nn.Module):
    """Images in [0, 1] (any size: resized to 299 bilinearly) -> (pool features [B, 2048],
    logits [B, classes]). ``tf_pooling``: the TF network's branch pools (see the module
    docstring); on by default for 1008 classes."""

    def __init__(self, num_classes: int = 1008, tf_pooling: bool | None = None, init_weights: bool = True):
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=False, init_weights=init_weights, num_classes=num_classes,
                                transform_input=False).eval()
        self.tf_pooling = num_classes == 1008 if tf_pooling is None else tf_pooling

    @classmethod
    def from_checkpoint(cls, path) -> "InceptionFeatures":
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        if "fc.weight" not in state:
            raise ValueError(f"{path}: not an Inception-v3 state dict in torchvision's layout (no fc.weight)")
        model = cls(num_classes=state["fc.weight"].shape[0], init_weights=False)  # all overwritten
        model.net.load_state_dict(state)
        return model

    def _block(self, name: str, x):
        block = getattr(self.net, name)
        if not self.tf_pooling:
            return block(x)
        if name.startswith("Mixed_5"):
            return _mixed_a(block, x)
        if name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            return _mixed_c(block, x)
        if name == "Mixed_7b":
            return _mixed_e(block, x, _avg_pool_unpadded)
        if name == "Mixed_7c":
            return _mixed_e(block, x, lambda t: F.max_pool2d(t, kernel_size=3, stride=1, padding=1))
        return block(x)  # the reduction blocks (6a, 7a) are the same in both networks

    @torch.no_grad()
    def forward(self, images_B3HW: torch.Tensor):
        n = self.net
        x = F.interpolate(images_B3HW.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = self._block(name, x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool, n.fc(pool)


# -- the formulas ----------------------------------------------------------------------------
def feature_statistics(features_ND) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance, float64: the ``mu`` and ``sigma`` of a stats file."""
    f = np.asarray(features_ND, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"FID statistics need at least 2 feature rows, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2); the last trace as the sum of the
    square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, PSD: same spectrum)."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.atleast_2d(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"FID: statistics of different sizes ({tuple(mu1.shape)} vs {tuple(mu2.shape)})")
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    middle = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * middle)


def inception_score(logits_NC, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of the images (in order), mean and std over splits."""
    logits = torch.as_tensor(np.asarray(logits_NC), dtype=torch.float64)
    splits = max(1, min(splits, len(logits)))
    scores = []
    for part in torch.tensor_split(logits, splits):
        logp = F.log_softmax(part, -1)
        logp_y = torch.logsumexp(logp, 0) - math.log(len(part))
        scores.append(float((logp.exp() * (logp - logp_y)).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path}: FID statistics need arrays 'mu' and 'sigma' (pytorch-fid's .npz)")
        return f["mu"], f["sigma"]


# -- reference statistics from a folder -------------------------------------------------------
def folder_statistics(image_dir, inception: InceptionFeatures, batch: int = 16):
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    files = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if len(files) < 2:
        raise ValueError(f"{image_dir}: FID statistics need at least 2 images, found {len(files)}")
    feats = []
    for i in range(0, len(files), batch):
        imgs = [pil_to_tensor(Image.open(p).convert("RGB")).float() / 255 for p in files[i:i + batch]]
        feats.append(torch.cat([inception(img[None])[0] for img in imgs]))  # sizes may differ
    return feature_statistics(torch.cat(feats).numpy())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ofa_ds.tasks.image_metrics",
                                 description="FID reference statistics (mu, sigma) of a folder of images")
    ap.add_argument("image_dir")
    ap.add_argument("--inception", required=True, help="Inception-v3 state dict (torchvision layout)")
    ap.add_argument("--out", required=True, help="output .npz")
    args = ap.parse_args(argv)
    mu, sigma = folder_statistics(args.image_dir, InceptionFeatures.from_checkpoint(args.inception))
    np.savez(args.out, mu=mu, sigma=sigma)
    print(f"wrote {args.out}: {len(mu)}-d statistics")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
