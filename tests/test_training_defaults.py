"""The default that fits the data (cxr.training.defaults.resolve_auto)."""

import pytest

from cxr.training.config import AUTO, ConfigError, TrainConfig
from cxr.training.defaults import (
    LARGE_DATA_BACKBONE,
    SMALL_DATA_BACKBONE,
    SMALL_DATA_IMAGES,
    SMALL_DATA_RECIPE,
    resolve_auto,
)


def found(*names):
    return lambda backbone: backbone in names


def test_small_set_gets_the_probe_on_the_pretrained_small_data_backbone():
    config, line = resolve_auto(TrainConfig(), 338, found(SMALL_DATA_BACKBONE))
    assert (config.recipe, config.backbone, config.pretrained) == (
        SMALL_DATA_RECIPE,
        SMALL_DATA_BACKBONE,
        "imagenet",
    )
    assert "338 training images" in line and SMALL_DATA_BACKBONE in line and "--recipe" in line


def test_large_set_gets_densenet_finetuned_with_weights_only_when_found():
    n = SMALL_DATA_IMAGES
    config, line = resolve_auto(TrainConfig(), n, found())
    assert (config.recipe, config.backbone, config.pretrained) == (
        "finetune",
        LARGE_DATA_BACKBONE,
        None,
    )
    assert "random init" in line and f"{n:,} training images" in line
    config, _ = resolve_auto(TrainConfig(), n, found(LARGE_DATA_BACKBONE))
    assert config.pretrained == "imagenet" and config.recipe == "finetune"


def test_explicit_settings_always_win():
    given = TrainConfig(recipe="finetune", backbone="efficientnet-lite2", pretrained="imagenet")
    config, line = resolve_auto(given, 50, found())
    assert config == given and line is None
    config, line = resolve_auto(TrainConfig(backbone="cxr-small-cnn"), 50, found())
    # no weights for the chosen backbone: the probe is impossible, fine-tuning from scratch
    assert (config.backbone, config.pretrained, config.recipe) == (
        "cxr-small-cnn",
        None,
        "finetune",
    )
    assert "probe needs pretrained weights" in line and "recipe, pretrained not given" in line


def test_a_head_the_probe_cannot_fill_keeps_finetuning():
    config, _ = resolve_auto(TrainConfig(hidden=(64,)), 100, found(SMALL_DATA_BACKBONE))
    assert config.recipe == "finetune" and config.pretrained == "imagenet"


def test_folds_ask_for_the_probe_ensemble():
    config, _ = resolve_auto(
        TrainConfig(folds=5), SMALL_DATA_IMAGES * 2, found(LARGE_DATA_BACKBONE)
    )
    assert config.recipe == "probe" and config.folds == 5


def test_auto_and_none_in_the_config():
    assert TrainConfig().recipe == AUTO and TrainConfig().backbone == AUTO
    assert TrainConfig(pretrained="none").pretrained is None
    assert TrainConfig(pretrained="None").pretrained is None
    with pytest.raises(ConfigError, match="recipe"):
        TrainConfig(recipe="linear")
