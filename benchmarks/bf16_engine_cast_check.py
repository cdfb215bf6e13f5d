"""GPU check: the model under DeepSpeed's bf16 cast (parameters bf16, buffers left float32)
runs forward and backward, finite, with BatchNorm statistics kept in float32.

    python benchmarks/bf16_engine_cast_check.py [--flavor base]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ofa_ds.config.flavors import get_flavor  # noqa: E402
from ofa_ds.model.ofa import OFAModel  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--flavor", default="base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    model = OFAModel(get_flavor(args.flavor, dropout=0.1)).to(args.device).train()
    for param in model.parameters():  # what DeepSpeed's bf16 engine does; buffers stay float32
        param.data = param.data.to(torch.bfloat16)
    B, S, T = 4, 16, 12
    src = torch.randint(4, 50000, (B, S), device=args.device)
    src[:, 0], src[:, -1] = 0, 2
    prev = torch.randint(4, 50000, (B, T), device=args.device)
    prev[:, 0] = 0
    images = torch.randn(B, 3, 256, 256, device=args.device, dtype=torch.bfloat16)
    logits, _ = model(src, None, prev, patch_images=images, patch_masks=torch.ones(B, dtype=torch.bool,
                                                                                     device=args.device),
                      code_masks=torch.tensor([False, False, True, False], device=args.device))
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    bn = model.encoder.embed_images.bn1
    grads_finite = all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)
    print(f"{args.flavor} on {args.device}: logits {logits.dtype}, loss {loss.item():.4f}, grads finite "
          f"{grads_finite}, bn weight {bn.weight.dtype}, running_mean {bn.running_mean.dtype}, "
          f"batches tracked {int(bn.num_batches_tracked)}")
    return 0 if grads_finite and torch.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
