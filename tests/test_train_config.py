"""TrainConfig: validation, YAML round trip, command-line options."""

from __future__ import annotations

import argparse

import pytest

from cxr.cli.train import add_parsers, config_from_args
from cxr.training.config import AugmentConfig, ConfigError, TrainConfig


def test_yaml_round_trip_keeps_every_field(tmp_path):
    config = TrainConfig(
        backbone="cxr-small-cnn",
        hidden=(64, 32),
        labels=("Mass", "Nodule"),
        augment=AugmentConfig(rotate=3.0, hflip=True),
        ema_decay=0.99,
    )
    back = TrainConfig.load(config.save(tmp_path / "config.yaml"))
    assert back == config
    assert back.augment.hflip is True and back.hidden == (64, 32)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("optimizer", "lbfgs", "optimizer"),
        ("precision", "int8", "precision"),
        ("batch_size", 0, "batch_size"),
        ("dropout", 1.5, "dropout"),
        ("ema_decay", 1.0, "ema_decay"),
    ],
)
def test_bad_values_name_the_field(field, value, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**{field: value})


def test_zero_epochs_in_both_phases_is_refused():
    with pytest.raises(ConfigError, match="at least 1"):
        TrainConfig(phase1_epochs=0, phase2_epochs=0)


def test_epochs_left_to_the_data_are_sized_by_the_steps_per_epoch():
    config = TrainConfig(phase1_min_steps=100, phase2_min_steps=300)
    assert config.phase1_epochs is None and config.phase2_epochs is None
    with pytest.raises(ConfigError, match="sized"):
        _ = config.epochs
    small = config.sized(9)  # ~300 images at batch 32
    assert (small.phase1_epochs, small.phase2_epochs) == (12, 34)  # ceil(100/9), ceil(300/9)
    large = config.sized(2450)  # the full NIH training set at batch 32
    assert (large.phase1_epochs, large.phase2_epochs) == (2, 8) and large.epochs == 10
    assert config.sizing_note(2450) is None
    note = config.sizing_note(9)
    assert note is not None and "12 epochs" in note and "34 epochs" in note
    # explicit epochs are run exactly; one phase may be explicit and the other sized
    mixed = config.replace(phase1_epochs=0).sized(9)
    assert (mixed.phase1_epochs, mixed.phase2_epochs) == (0, 34)
    assert TrainConfig(phase1_epochs=1, phase2_epochs=3).sized(1) == TrainConfig(
        phase1_epochs=1, phase2_epochs=3
    )
    off = TrainConfig(phase1_min_steps=0, phase2_min_steps=0).sized(1)
    assert (off.phase1_epochs, off.phase2_epochs) == (2, 8)


def test_sized_epochs_survive_the_yaml_round_trip_unsized(tmp_path):
    config = TrainConfig(phase2_epochs=5)
    back = TrainConfig.load(config.save(tmp_path / "config.yaml"))
    assert back.phase1_epochs is None and back.phase2_epochs == 5 and back == config
    with pytest.raises(ConfigError, match="phase1_epochs"):
        TrainConfig(phase1_epochs=-1)
    with pytest.raises(ConfigError, match="phase2_min_steps"):
        TrainConfig(phase2_min_steps=-5)


def test_unknown_keys_in_a_file_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("phase2_lr: 0.001\nlearning_rate: 0.1\naugment:\n  rotation: 4\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.load(path)
    path.write_text("augment:\n  rotation: 4\n")
    with pytest.raises(ConfigError, match="augment.rotation"):
        TrainConfig.load(path)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def test_command_line_options_override_a_config_file(tmp_path):
    saved = TrainConfig(phase2_lr=5e-5, batch_size=8).save(tmp_path / "config.yaml")
    args = _parse(
        [
            "a",
            "b",
            "--config",
            str(saved),
            "--batch-size",
            "4",
            "--hidden",
            "16,8",
            "--no-augment-enabled",
            "--channels-last",
        ]
    )
    config = config_from_args(args)
    assert config.phase2_lr == 5e-5 and config.batch_size == 4 and config.hidden == (16, 8)
    assert config.augment.enabled is False and config.channels_last is True


def test_bad_hidden_list_is_explained():
    with pytest.raises(ValueError, match="--hidden"):
        config_from_args(_parse(["a", "b", "--hidden", "wide"]))


def test_fast_defaults_and_the_deterministic_choice(tmp_path):
    config = TrainConfig()
    assert config.channels_last is True and config.deterministic is None
    assert config.deterministic_on("cpu") is True and config.deterministic_on("cuda") is False
    assert TrainConfig.load(config.save(tmp_path / "c.yaml")) == config
    for value in (True, False):  # config.yaml files written before the change still load
        (tmp_path / "old.yaml").write_text(f"deterministic: {str(value).lower()}\n")
        old = TrainConfig.load(tmp_path / "old.yaml")
        assert old.deterministic is value
        assert old.deterministic_on("cpu") is value and old.deterministic_on("cuda") is value
    with pytest.raises(ConfigError, match="deterministic"):
        TrainConfig(deterministic="yes")  # type: ignore[arg-type]
    args = _parse(["a", "b", "--no-channels-last", "--deterministic"])
    assert config_from_args(args).channels_last is False
    assert config_from_args(args).deterministic is True
    assert config_from_args(_parse(["a", "b"])).deterministic is None
