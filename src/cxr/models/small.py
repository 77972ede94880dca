"""``cxr-small-cnn``: a small, fast convolutional backbone for CPU runs, tests and the demo.

Five stages of 3x3 convolutions with BatchNorm and ReLU (32, 48, 96, 160, 256 channels),
each halving the resolution: a 64x64 input gives a (B, 256, 2, 2) feature map, a 224x224
input (B, 256, 7, 7), like DenseNet's 1/32. About 1.5 M parameters, random init only (no
pretrained weights exist for it). Not meant to match DenseNet-121 on real radiographs.
"""

from __future__ import annotations

from torch import nn

WIDTHS: tuple[int, ...] = (32, 48, 96, 160, 256)


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


def small_cnn(widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """(B, 3, H, W) float -> (B, widths[-1], H/2^k, W/2^k), k = len(widths).

    The stages are named ``stage1`` ... ``stageK``; the last ReLU of the last stage
    (``stageK.5``) is the Grad-CAM target layer.
    """
    layers, c_in = [], 3
    for i, width in enumerate(widths, start=1):
        layers.append((f"stage{i}", _stage(c_in, width)))
        c_in = width
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))
