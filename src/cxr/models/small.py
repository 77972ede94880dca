"""``cxr-small-cnn``: a small, fast convolutional backbone for CPU runs, tests and the demo.

Five stages (32, 48, 96, 160, 256 channels), each two convolutions with BatchNorm and
ReLU. Only the first two stages downsample, so the feature map is 1/4 of the input:
a 64x64 input gives (B, 256, 16, 16), a 224x224 input (B, 256, 56, 56). That fine map is
what makes Grad-CAM on this backbone useful at the small sizes it is trained at on CPU
(the five-times-downsampling layout gave 2x2 maps at 64 px).

Layout (k = kernel, s = stride):

- stage1, stage2: k2 s2 (a non-overlapping 2x2 "patchify" downsampling, so that feature
  cell i is centred on input pixels [4i, 4i + 4), exactly where a bilinear upsampling with
  ``align_corners=False`` puts it) then k3;
- stage3: k3 then k1;
- stage4, stage5: k1 then k1.

The receptive field is 24x24 input pixels: the features are local detectors, pooled by
the head over the whole map. About 0.2 M parameters, random init only (no pretrained
weights exist). Not meant to match DenseNet-121 on real radiographs.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

WIDTHS: tuple[int, ...] = (32, 48, 96, 128, 128)
#: Per stage: (kernel, stride) of the first convolution and kernel of the second; stages
#: beyond this table use the last entry.
LAYOUT: tuple[tuple[int, int, int], ...] = ((2, 2, 3), (2, 2, 3), (3, 1, 1), (1, 1, 1))
#: Input pixels per feature-map cell.
STRIDE = 4


def _stage(c_in: int, c_out: int, k1: int, stride: int, k2: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            c_in, c_out, k1, stride=stride, padding=(k1 - 1) // 2 if stride == 1 else 0, bias=False
        ),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, k2, padding=k2 // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


def small_cnn(widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """(B, 3, H, W) float -> (B, widths[-1], H // 4, W // 4) (two stride-2 stages when
    ``len(widths) >= 2``).

    The stages are named ``stage1`` ... ``stageK``; the last ReLU of the last stage
    (``stageK.5``) is the Grad-CAM target layer.
    """
    layers, c_in = [], 3
    for i, width in enumerate(widths, start=1):
        k1, stride, k2 = LAYOUT[min(i, len(LAYOUT)) - 1]
        layers.append((f"stage{i}", _stage(c_in, width, k1, stride, k2)))
        c_in = width
    return nn.Sequential(OrderedDict(layers))
