"""cxr.tuning.params: one search parameter, a space file's entry, values into settings."""

from __future__ import annotations

import pytest

from cxr.errors import CxrError
from cxr.training import TrainConfig
from cxr.tuning.params import HIDDEN_LAYERS, Param, SpaceError, apply_values, parse_param


def test_entries_become_ranges_choices_or_fixed_values():
    assert parse_param("phase2_lr", {"low": "1e-5", "high": 1e-3, "log": True}, "f") == Param(
        "phase2_lr", low=1e-5, high=1e-3, log=True
    )
    assert parse_param("optimizer", {"choices": ["adamw", "sgd"]}, "f").choices == (
        "adamw",
        "sgd",
    )
    fixed = parse_param("batch_size", 32, "f")
    assert fixed.fixed and fixed.value == 32 and fixed.is_int
    assert parse_param(HIDDEN_LAYERS, {"low": 0, "high": 2}, "f").is_int


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("nonsense", 1, "unknown setting"),
        ("batch_size", {"low": 8.5, "high": 16}, "whole number"),
        ("phase2_lr", {"low": 1e-3, "high": 1e-5}, "is above high"),
        ("phase2_lr", {"low": 0, "high": 1, "log": True}, "needs low > 0"),
        ("optimizer", {"low": 0, "high": 1}, "not a numeric setting"),
        ("optimizer", ["adamw"], "choices: "),
    ],
)
def test_bad_entries_name_file_and_parameter(name, spec, message):
    with pytest.raises(SpaceError, match=message) as caught:
        parse_param(name, spec, "space.yaml")
    assert str(caught.value).startswith(f"space.yaml: params.{name}: ")
    assert isinstance(caught.value, CxrError) and isinstance(caught.value, ValueError)


def test_apply_values_sets_fields_and_augmentation():
    base = TrainConfig()
    got = apply_values(base, {"dropout": 0.5, "augment.rotate": 3.0, "hidden": [64, 32]})
    assert got.dropout == 0.5 and got.augment.rotate == 3.0 and got.hidden == (64, 32)
    assert apply_values(base, {}) is base


def test_param_describes_itself_and_round_trips_to_yaml():
    p = Param("phase1_min_steps", low=0, high=300, step=50)
    assert p.describe() == "phase1_min_steps 0..300 step 50"
    assert p.to_dict() == {"low": 0, "high": 300, "step": 50}
    assert p.candidates() == [0, 300]
