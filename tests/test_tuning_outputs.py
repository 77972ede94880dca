"""cxr.tuning.outputs: the files of a study's output folder, each written whole."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from cxr.training import TrainConfig
from cxr.tuning.outputs import (
    BEST_CONFIG,
    BEST_TRIAL,
    HISTORY_PNG,
    IMPORTANCES_PNG,
    TRIALS_CSV,
    write_atomic,
    write_outputs,
)


def test_write_atomic_writes_text_and_bytes_and_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path / "a.txt", "text")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text() == "text"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(direction="maximize")
    for value in (0.6, 0.8):
        trial = s.ask({"dropout": optuna.distributions.FloatDistribution(0.0, 0.5)})
        config = TrainConfig(dropout=trial.params["dropout"])
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("run_dir", f"trial_{trial.number}")
        s.tell(trial, value)
    return s


def test_outputs_hold_the_trials_the_best_config_and_the_figures(study, tmp_path):
    written = write_outputs(study.trials, study, tmp_path / "out", "s1")
    names = [p.name for p in written]
    assert names == [TRIALS_CSV, BEST_CONFIG, BEST_TRIAL, HISTORY_PNG, IMPORTANCES_PNG]
    best = json.loads((tmp_path / "out" / BEST_TRIAL).read_text())
    assert best["study"] == "s1" and best["number"] == 1 and best["value"] == 0.8
    config = yaml.safe_load((tmp_path / "out" / BEST_CONFIG).read_text())
    assert config["dropout"] == study.trials[1].params["dropout"]
    assert (tmp_path / "out" / HISTORY_PNG).read_bytes().startswith(b"\x89PNG")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
