"""Models: backbone registry, model spec, pretrained weights and the chest X-ray classifier.

>>> from cxr.models import ModelSpec, build_model
>>> model = build_model(ModelSpec(labels=("Effusion", "Cardiomegaly")))  # random weights
>>> # build_model(spec, pretrained="imagenet") loads ImageNet weights found locally

The registry, :class:`ModelSpec` and :class:`Preprocessing` import no torch (reading a model
file's metadata, e.g. for ONNX Runtime, needs none); the classifier and the pretrained
weights load torch on first use of their names.
"""

from typing import TYPE_CHECKING, Any

from cxr.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneEntry,
    WeightsConfig,
    get_backbone,
    list_backbones,
    register_backbone,
)
from cxr.models.spec import HeadConfig, ModelSpec
from cxr.preprocessing import Preprocessing, to_model_input

if TYPE_CHECKING:
    from cxr.models.classifier import (
        ChestClassifier,
        ClassifierHead,
        GeM,
        build_model,
        ensemble_logits,
        freeze_backbone,
        parameter_groups,
        unfreeze_backbone,
    )
    from cxr.models.pretrained import (
        PretrainedWeightsError,
        WeightsNotFoundError,
        find_pretrained,
        load_pretrained,
    )

#: Name -> the module that defines it, imported on first use (each module's ``__all__``;
#: tests/test_models.py checks that the two lists agree).
_LAZY: dict[str, str] = {
    name: module
    for module, names in (
        (
            "cxr.models.classifier",
            "ChestClassifier ClassifierHead GeM build_model ensemble_logits freeze_backbone "
            "parameter_groups unfreeze_backbone",
        ),
        (
            "cxr.models.pretrained",
            "PretrainedWeightsError WeightsNotFoundError find_pretrained load_pretrained",
        ),
    )
    for name in names.split()
}


def __getattr__(name: str) -> Any:
    # torch is loaded on first use of a name that needs it
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxr.models' has no attribute {name!r}")


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneEntry",
    "ChestClassifier",
    "ClassifierHead",
    "GeM",
    "HeadConfig",
    "ModelSpec",
    "Preprocessing",
    "PretrainedWeightsError",
    "WeightsConfig",
    "WeightsNotFoundError",
    "build_model",
    "ensemble_logits",
    "find_pretrained",
    "freeze_backbone",
    "get_backbone",
    "list_backbones",
    "load_pretrained",
    "parameter_groups",
    "to_model_input",
    "register_backbone",
    "unfreeze_backbone",
]
