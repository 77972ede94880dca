"""The search space of cxr tune (cxr.tuning.space): default draws, YAML files, errors."""

from __future__ import annotations

import optuna
import pytest

from cxr.training import TrainConfig
from cxr.training.config import LOSSES, OPTIMIZERS
from cxr.tuning import DEFAULT_SPACE, SearchSpace, SpaceError

BASE = TrainConfig(backbone="cxr-small-cnn", device="cpu")


def _asked(n: int, seed: int = 0):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    return [study.ask() for _ in range(n)]


def test_default_space_draws_valid_configs():
    space = SearchSpace.default()
    layer_counts = set()
    for trial in _asked(60):
        config = space.suggest(trial, BASE)
        p = trial.params
        assert isinstance(config, TrainConfig)
        assert config.optimizer == p["optimizer"] and config.optimizer in OPTIMIZERS
        assert config.loss in LOSSES and config.pool in ("avg", "gem")
        assert 1e-5 <= config.phase1_lr <= 1e-1 and 1e-5 <= config.phase2_lr <= 1e-1
        assert config.batch_size in (16, 32, 64) and config.dropout in (0.1, 0.3, 0.5)
        assert isinstance(config.phase2_min_steps, int) and 100 <= config.phase2_min_steps <= 2000
        assert config.phase1_min_steps % 50 == 0
        # one width per layer, drawn only for the layers the trial has
        n = p["hidden_layers"]
        layer_counts.add(n)
        assert len(config.hidden) == n and all(64 <= w <= 512 for w in config.hidden)
        widths = sorted(k for k in p if k.startswith("hidden_width_"))
        assert widths == [f"hidden_width_{i + 1}" for i in range(n)]
        assert config.backbone == "cxr-small-cnn"  # the base config's other settings stay
    assert layer_counts == {0, 1, 2, 3, 4, 5}


def test_fixed_trial_gives_exactly_its_values():
    params = {
        "optimizer": "sgd",
        "phase1_lr": 1e-3,
        "phase2_lr": 2e-4,
        "head_lr_factor": 3.0,
        "batch_size": 16,
        "hidden_layers": 2,
        "hidden_width_1": 300,
        "hidden_width_2": 70,
        "dropout": 0.3,
        "loss": "focal",
        "pool": "gem",
        "phase1_min_steps": 150,
        "phase2_min_steps": 500,
    }
    config = SearchSpace.default().suggest(optuna.trial.FixedTrial(params), BASE)
    assert config.hidden == (300, 70) and config.optimizer == "sgd" and config.pool == "gem"
    assert config.phase2_lr == 2e-4 and config.phase2_min_steps == 500 and config.loss == "focal"


def test_yaml_narrows_the_default_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n"
        "  phase2_lr: {low: 1e-5, high: 1e-3, log: true}\n"  # YAML reads 1e-5 as text
        "  optimizer: {choices: [adamw, sgd]}\n"
        "  batch_size: 32\n"
        "  hidden_layers: {low: 0, high: 2}\n"
        "  augment.rotate: {low: 0, high: 10}\n"
    )
    space = SearchSpace.load(path)
    names = [p.name for p in space.params]
    assert set(names) == {p.name for p in DEFAULT_SPACE} | {"augment.rotate"}
    for trial in _asked(30):
        config = space.suggest(trial, BASE)
        assert 1e-5 <= config.phase2_lr <= 1e-3 and config.optimizer in ("adamw", "sgd")
        assert config.batch_size == 32 and "batch_size" not in trial.params  # fixed
        assert len(config.hidden) <= 2 and 0 <= config.augment.rotate <= 10
        assert config.augment.scale == BASE.augment.scale


def test_yaml_replaces_the_default_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("replace: true\nparams:\n  phase2_lr: {low: 0.001, high: 0.01}\n")
    space = SearchSpace.load(path)
    assert [p.name for p in space.params] == ["phase2_lr"]
    (trial,) = _asked(1)
    config = space.suggest(trial, BASE)
    assert list(trial.params) == ["phase2_lr"] and 1e-3 <= config.phase2_lr <= 1e-2
    assert config.replace(phase2_lr=BASE.phase2_lr) == BASE


def test_inert_default_parameters_are_left_out():
    base = BASE.replace(phase1_epochs=0, phase2_epochs=3)
    space, notes = SearchSpace.default().without_inert(base)
    names = {p.name for p in space.params}
    assert not names & {"phase1_min_steps", "phase2_min_steps", "phase1_lr"}
    assert "phase2_lr" in names and len(notes) == 3 and "phase1_epochs is 0" in " ".join(notes)
    # a parameter the user gave is kept even when inert
    mine = SearchSpace.from_dict({"params": {"phase1_lr": {"low": 0.1, "high": 0.2}}})
    assert "phase1_lr" in {p.name for p in mine.without_inert(base)[0].params}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params:\n  learning_rate: 0.1\n", "params.learning_rate: unknown setting"),
        (
            "params:\n  phase2_lr: {low: 0.1, high: 0.01}\n",
            "params.phase2_lr: low 0.1 is above high",
        ),
        (
            "params:\n  phase2_lr: {low: 0, high: 0.1, log: true}\n",
            "params.phase2_lr: log: true needs",
        ),
        ("params:\n  optimizer: {choices: []}\n", "params.optimizer: choices must be a non-empty"),
        ("params:\n  optimizer: {choices: [adamw, lion]}\n", "params.optimizer: 'lion'"),
        ("params:\n  dropout: {low: 0.1, high: 1.5}\n", "params.dropout: 1.5: dropout=1.5"),
        (
            "params:\n  batch_size: {low: 8, high: 64.5}\n",
            "params.batch_size: high 64.5 must be a whole",
        ),
        ("params:\n  loss: {low: 1, high: 2}\n", "params.loss: not a numeric setting"),
        ("params:\n  phase2_lr: {low: 0.1}\n", "params.phase2_lr: a range needs both"),
        ("params:\n  phase2_lr: {lo: 0.1, high: 1}\n", "params.phase2_lr: unknown key(s) ['lo']"),
        ("params:\n  augment: {rotate: 3}\n", "params.augment: unknown setting"),
        ("params:\n  optimizer: [adamw, sgd]\n", "params.optimizer: write a list of values as"),
        ("replace: maybe\nparams: {}\n", "replace must be true or false"),
        ("prams: {}\n", "unknown key(s) ['prams']"),
        ("- a\n- b\n", "must hold a mapping"),
        ("params:\n  phase2_lr: {low: 1e-4, high: [1\n", "not valid YAML"),
        ("replace: true\nparams: {}\n", "replace: true needs at least one parameter"),
    ],
)
def test_space_errors_name_the_file_and_parameter(tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        SearchSpace.load(path).check(BASE)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_missing_space_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match=r"nope\.yaml: no such search-space file"):
        SearchSpace.load(tmp_path / "nope.yaml")


def test_space_round_trips_through_its_dict():
    space = SearchSpace.default()
    again = SearchSpace.from_dict(space.to_dict())
    assert again.params == space.params
    assert "optimizer in {" in space.describe() and "phase2_lr 1e-05..0.1 log" in space.describe()
