"""The default that fits the data: backbone, weights and recipe chosen by the training set's size.

``cxr train TRAIN VAL`` with no ``--recipe``, ``--backbone`` or ``--pretrained`` leaves those
settings at ``"auto"``; :func:`resolve_auto` decides them when the training cache is open,
before anything is written, and says what it chose and why in one line:

- a **small** training set (fewer than :data:`SMALL_DATA_IMAGES` images): the backbone with
  offline ImageNet weights that cross-validation on the NIH sample favoured
  (:data:`SMALL_DATA_BACKBONE`, BENCHMARKS.md "Small data"), its ImageNet weights, and the
  probe recipe (a linear head on frozen features), which beat fine-tuning there;
- a **large** one: DenseNet-121, as the seeds ask, fine-tuned in two phases; its ImageNet
  weights when they are found locally (none can be downloaded here), else random
  initialisation.

A setting given explicitly always wins; only the ``"auto"`` ones are decided, and the
others are kept even when they make the small-data recipe impossible (a backbone without
local weights, a head with hidden layers: then the recipe is fine-tuning). The run's
``config.yaml`` holds the decided values, so ``--resume`` and ``--config`` repeat them.
"""

from __future__ import annotations

from collections.abc import Callable

from cxr.training.config import AUTO, TrainConfig

__all__ = [
    "LARGE_DATA_BACKBONE",
    "SMALL_DATA_BACKBONE",
    "SMALL_DATA_IMAGES",
    "SMALL_DATA_RECIPE",
    "resolve_auto",
]

#: Training sets with fewer images than this get the small-data default.
SMALL_DATA_IMAGES = 10_000
#: The small-data backbone: offline ImageNet weights, best in the NIH-sample cross-validation.
SMALL_DATA_BACKBONE = "efficientnet-lite0"
#: The small-data recipe.
SMALL_DATA_RECIPE = "probe"
#: The large-data backbone (the seeds' CheXNet architecture).
LARGE_DATA_BACKBONE = "densenet121"


def _weights_found(backbone: str) -> bool:
    """Whether ImageNet weights for ``backbone`` are on this machine (nothing downloaded)."""
    from cxr.models.pretrained import WeightsNotFoundError, find_pretrained

    try:
        find_pretrained(backbone, "imagenet")
    except (WeightsNotFoundError, ValueError, OSError):
        return False
    return True


def resolve_auto(
    config: TrainConfig,
    n_train: int,
    weights_found: Callable[[str], bool] = _weights_found,
) -> tuple[TrainConfig, str | None]:
    """``config`` with its ``"auto"`` backbone, pretrained and recipe decided for a training
    set of ``n_train`` images, and a line saying what was chosen and why (None when nothing
    was ``"auto"``).

    Args:
        config: the settings; fields other than the three ``"auto"`` ones are kept.
        n_train: images in the training cache.
        weights_found: whether ImageNet weights for a backbone are available locally
            (default: :func:`cxr.models.find_pretrained` without downloading).
    """
    auto = [n for n in ("recipe", "backbone", "pretrained") if getattr(config, n) == AUTO]
    if not auto:
        return config, None
    small = n_train < SMALL_DATA_IMAGES
    size = f"{n_train:,} training images ({'<' if small else '>='} {SMALL_DATA_IMAGES:,})"
    backbone = config.backbone
    if backbone == AUTO:
        backbone = SMALL_DATA_BACKBONE if small else LARGE_DATA_BACKBONE
    pretrained = config.pretrained
    weights_note = ""
    if pretrained == AUTO:
        if weights_found(backbone):
            pretrained = "imagenet"
        else:
            pretrained = None
            weights_note = f"no ImageNet weights for {backbone} found locally: random init"
    recipe = config.recipe
    recipe_note = ""
    if recipe == AUTO:
        probe_ok = pretrained is not None and not config.hidden and config.pool == "avg"
        probe_ok = probe_ok and config.dropout == 0.0
        recipe = SMALL_DATA_RECIPE if small and probe_ok else "finetune"
        if small and not probe_ok:
            recipe_note = "the probe needs pretrained weights and a plain average-pooled head"
        if recipe == "finetune" and config.folds > 1:
            recipe = SMALL_DATA_RECIPE  # --folds K asks for the probe ensemble
    decided = config.replace(backbone=backbone, pretrained=pretrained, recipe=recipe)
    why = (
        "cross-validated best on the NIH sample (BENCHMARKS.md)"
        if small
        else "DenseNet-121 fine-tuned, as CheXNet"
    )
    chosen = f"recipe {recipe}, {backbone}, weights {pretrained or 'none (random init)'}"
    notes = "; ".join(n for n in (weights_note, recipe_note) if n)
    line = (
        f"default chosen by the data ({', '.join(auto)} not given): {size}: {chosen} — {why}"
        + (f" ({notes})" if notes else "")
        + "; --recipe, --backbone and --pretrained choose otherwise"
    )
    return decided, line
