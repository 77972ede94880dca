"""One trial of a study (cxr.tuning.trial): a failure is recorded as the trial's one line; a
failure that is not a user error (a bug) also leaves its traceback in the trial's log."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from cxr.errors import CxrError
from cxr.training import TrainConfig
from cxr.tuning import SearchSpace
from cxr.tuning.trial import run_trial


def _run(tmp_path, monkeypatch, error: Exception):
    def failing_train(*args, **kwargs):
        raise error

    monkeypatch.setattr("cxr.training.train", failing_train)
    study = optuna.create_study(direction="maximize")
    space = SearchSpace.from_dict({"replace": True, "params": {"phase2_lr": 3e-3}})
    frozen = run_trial(
        study, study.ask(), space, TrainConfig(), tmp_path / "t", tmp_path / "v", tmp_path
    )
    log = tmp_path.glob("**/tune.log")
    return frozen, "".join(p.read_text() for p in log)


class _BadInput(CxrError):
    pass


def test_a_user_error_fails_the_trial_with_its_line_and_no_traceback(tmp_path, monkeypatch):
    frozen, log = _run(tmp_path, monkeypatch, _BadInput("train.csv: no images"))
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "_BadInput: train.csv: no images"
    assert "Traceback" not in log


@pytest.mark.parametrize("error", [TypeError("unsupported operand"), KeyError("x")])
def test_a_bug_fails_the_trial_and_logs_its_traceback(tmp_path, monkeypatch, error):
    frozen, log = _run(tmp_path, monkeypatch, error)
    assert frozen.state == TrialState.FAIL
    assert "\n" not in frozen.user_attrs["fail_reason"]
    assert "Traceback" in log and type(error).__name__ in log
