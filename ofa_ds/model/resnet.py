"""OFA's image backbone: the first three stages of a ResNet v1.5 (stride on the 3x3 conv).

Output: [B, 1024, H/16, W/16]. Module names match the released checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2,3}``, ``downsample.{0,1}``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds.model.layers import DropPath, drop_path_rates


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises in its running statistics' dtype (float32).

    Mixed-precision engines cast parameters to bf16/fp16 but leave buffers in float32;
    plain BatchNorm then refuses the mix. Statistics in float32 are also what keeps
    batch-statistics training stable in low precision. Same names as nn.BatchNorm2d.

    ``mixed_input`` (class-wide switch, :func:`set_mixed_input_batchnorm`): pass a bf16/fp16
    activation straight to the kernel with float32 affine parameters and statistics. cuDNN
    and the CPU kernel accept that mix and compute in float32 internally, so the two
    full-size activation casts per BatchNorm (the "dtype copies" of the H200 profile) go away;
    the result is rounded to the input dtype once either way."""

    mixed_input = False

    def forward(self, x):
        dtype = self.running_mean.dtype
        if x.dtype == dtype and self.weight.dtype == dtype:
            return super().forward(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        weight, bias = self.weight.to(dtype), self.bias.to(dtype)
        if self.mixed_input:
            return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training,
                                self.momentum, self.eps)
        y = F.batch_norm(x.to(dtype), self.running_mean, self.running_var, weight, bias, self.training,
                         self.momentum, self.eps)
        return y.to(x.dtype)


def set_mixed_input_batchnorm(enabled: bool) -> None:
    """Switch every :class:`BatchNorm2d` between the cast-in/cast-out path and mixed input."""
    BatchNorm2d.mixed_input = bool(enabled)


def _bn(channels: int) -> BatchNorm2d:
    return BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, drop_path: float):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            _bn(out_ch))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(shortcut + self.drop_path(y))


class ResNetBackbone(nn.Module):
    out_channels = 1024
    stride = 16

    def __init__(self, blocks: tuple[int, int, int], drop_path_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for stage, (n_blocks, planes, stride) in enumerate(zip(blocks, (64, 128, 256), (1, 2, 2)), 1):
            # Block 0 of each stage never drops; the rest ramp linearly up to the rate.
            rates = drop_path_rates(drop_path_rate, n_blocks)
            layer = []
            for i in range(n_blocks):
                layer.append(Bottleneck(in_ch, planes, stride if i == 0 else 1, 0.0 if i == 0 else rates[i]))
                in_ch = planes * Bottleneck.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layer))

    channels_last = False
    """Run the convolutions on NHWC activations (``use_channels_last``): the layout tensor
    cores and cuDNN's fused kernels want. The output is then NHWC as well, which is exactly
    the [B, h*w, C] patch order the encoder flattens to, so that needs no copy either."""

    def use_channels_last(self, enabled: bool = True) -> "ResNetBackbone":
        # Only the activations change layout: the convolution follows its input's format.
        # Weights stay contiguous, because DeepSpeed views every parameter as flat bytes
        # (broadcast, ZeRO buffers), which a channels-last weight refuses.
        self.channels_last = bool(enabled)
        return self

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images_B3HW = images_B3HW.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(images_B3HW))))
        return self.layer3(self.layer2(self.layer1(x)))
