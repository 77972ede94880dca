"""Studies of cxr tune (cxr.tuning.study): search, pruning, failures, kills, workers, MLflow."""

from __future__ import annotations

import csv
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from cxr.training import TrainConfig, train
from cxr.tuning import SearchSpace, TuneError, records, tune
from cxr.tuning.study import _Search
from cxr.tuning.trial import PruningCallback, TrialFailed
from cxr.tuning.workers import _process_start

BASE = TrainConfig(
    backbone="cxr-small-cnn",
    phase1_epochs=0,
    phase2_epochs=1,
    batch_size=32,
    phase2_lr=3e-3,
    calibration="none",
    device="cpu",
    seed=0,
)
#: A narrow space of quick trials for the subprocess tests.
QUICK_SPACE = "replace: true\nparams:\n  phase2_lr: {low: 1e-3, high: 1e-2, log: true}\n"


@pytest.fixture(scope="module")
def caches(phantom_caches_300):
    return phantom_caches_300


def _journal(out: Path, name: str = "cxr") -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _cli(caches, out: Path, trials: int, *extra: str) -> list[str]:
    space = out.parent / "quick_space.yaml"
    space.write_text(QUICK_SPACE)
    return [
        sys.executable, "-m", "cxr", "tune", str(caches["train"]), str(caches["val"]),
        "--trials", str(trials), "--out", str(out), "--space", str(space), "--pruner", "none",
        "--backbone", "cxr-small-cnn", "--phase1-epochs", "0", "--phase2-epochs", "1",
        "--batch-size", "32", "--calibration", "none", "--device", "cpu", "--threads", "1",
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}


def test_search_beats_a_poor_base_config(caches, tmp_path):
    # one label the small CNN learns in an epoch at a good learning rate, not at 1e-6
    poor = BASE.replace(
        optimizer="sgd", phase2_lr=1e-6, momentum=0.0, labels=("Cardiomegaly",), phase2_epochs=1
    )
    quiet = lambda s: None  # noqa: E731
    base_auc = train(poor, caches["train"], caches["val"], tmp_path / "poor", progress=False,
                     echo=quiet).best_auc  # fmt: skip
    space = SearchSpace.from_dict(
        {"replace": True, "params": {"phase2_lr": {"low": 1e-3, "high": 3e-2, "log": True},
                                     "optimizer": {"choices": ["adamw", "adam"]}}}
    )  # fmt: skip
    lines: list[str] = []
    result = tune(poor, caches["train"], caches["val"], tmp_path / "tune", 3, space=space,
                  pruner="none", echo=lines.append)  # fmt: skip
    assert result.counts["complete"] == 3 and result.best_value is not None
    assert result.best_value > base_auc + 0.15, (result.best_value, base_auc)
    # the outputs: best config (the poor base with the best values), trials, figures
    best = TrainConfig.load(tmp_path / "tune" / "best_config.yaml")
    assert best == result.best_config and best.momentum == 0.0 and best.optimizer != "sgd"
    rows = list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 and "phase2_lr" in rows[0]
    assert max(float(r["value"]) for r in rows) == pytest.approx(result.best_value)
    assert (
        result.best_run_dir
        == (tmp_path / "tune" / "trials" / f"trial-{result.best_trial:04d}").resolve()
    )
    assert (result.best_run_dir / "best.safetensors").is_file()
    assert sum(line.startswith("trial ") for line in lines) == 3
    for name in ("optimisation_history.png", "param_importances.png"):
        assert (tmp_path / "tune" / name).stat().st_size > 5000
    # the same call again: the study is full, nothing runs; another base config is refused
    again = tune(
        poor, caches["train"], caches["val"], tmp_path / "tune", 3, space=space, echo=quiet
    )
    assert again.counts == result.counts
    with pytest.raises(TuneError, match=r"phase2_lr 1e-06 -> 0\.001.*--force-config"):
        tune(poor.replace(phase2_lr=1e-3), caches["train"], caches["val"], tmp_path / "tune", 3)


def test_a_pruned_trial_stops_early(caches, tmp_path):
    """The pruner's verdict stops the run from inside the training loop after that epoch."""
    pruner = optuna.pruners.ThresholdPruner(lower=0.999, n_warmup_steps=2)  # prunes at epoch 2
    space = SearchSpace.from_dict({"replace": True, "params": {"phase2_lr": 3e-3}})
    lines: list[str] = []
    result = tune(BASE.replace(phase2_epochs=4), caches["train"], caches["val"], tmp_path, 1,
                  space=space, pruner=pruner, echo=lines.append)  # fmt: skip
    assert result.counts["pruned"] == 1 and result.best_trial is None
    trial = _journal(tmp_path).trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    history = list(csv.DictReader((tmp_path / "trials" / "trial-0000" / "history.csv").open()))
    assert len(history) == 2 and sorted(trial.intermediate_values) == [1, 2]
    assert any(line.startswith("trial 0 pruned after epoch 2 (") for line in lines)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert rows[0]["state"] == "PRUNED" and rows[0]["epochs"] == "2"


def test_a_failing_trial_is_recorded_and_the_study_goes_on(caches, tmp_path):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="cxr", direction="maximize")
    study.enqueue_trial({"batch_size": 100000})  # more than the training set: training raises
    study.enqueue_trial({"batch_size": 32})
    space = SearchSpace.from_dict(
        {"replace": True, "params": {"batch_size": {"choices": [32, 100000]}}}
    )
    lines: list[str] = []
    result = tune(BASE, caches["train"], caches["val"], tmp_path, 2, space=space,
                  storage=storage, echo=lines.append)  # fmt: skip
    failed, done = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL and records.kind(failed) == "failed"
    assert "fewer than one batch" in failed.user_attrs["fail_reason"]
    assert "\n" not in failed.user_attrs["fail_reason"]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert result.counts["failed"] == 1 and result.counts["complete"] == 1
    assert any("trial 0 failed: TrainError" in line for line in lines)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert "fewer than one batch" in rows[0]["fail_reason"]


class _FakeTrial:
    def __init__(self, prune: bool = False) -> None:
        self.reported: list[tuple[float, int]] = []
        self.prune = prune

    def report(self, value, step):
        self.reported.append((value, step))

    def should_prune(self):
        return self.prune


def test_pruning_callback_reports_finite_values_and_stops_on_nan():
    trial = _FakeTrial()
    cb = PruningCallback(trial)  # type: ignore[arg-type]
    cb.on_epoch({"epoch": 1, "train_loss": 0.5, "val_macro_auc": 0.7})
    assert trial.reported == [(0.7, 1)]
    with pytest.raises(TrialFailed, match="training loss is nan at epoch 2"):
        cb.on_epoch({"epoch": 2, "train_loss": math.nan, "val_macro_auc": 0.7})
    with pytest.raises(TrialFailed, match="validation macro AUC is NaN at epoch 3"):
        cb.on_epoch({"epoch": 3, "train_loss": 0.4, "val_macro_auc": math.nan})
    assert trial.reported == [(0.7, 1)]  # NaN never reported
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 4"):
        PruningCallback(_FakeTrial(prune=True)).on_epoch(  # type: ignore[arg-type]
            {"epoch": 4, "train_loss": 0.4, "val_macro_auc": 0.6}
        )


def test_the_loser_of_a_race_for_the_last_slot_gives_its_trial_back(caches, tmp_path):
    """A trial running in another live worker counts: asking for one more makes it surplus."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="cxr", direction="maximize")
    other = study.ask()  # "another worker": the live process 1 of this host
    other.set_user_attr(
        "worker", {"host": socket.gethostname(), "pid": 1, "started": _process_start(1)}
    )
    search = _Search(
        study, storage, "memory", "cxr", BASE, SearchSpace.default(),
        (caches["train"], caches["val"]), tmp_path, 1, 0, None, "cxr", lambda s: None, False,
    )  # fmt: skip
    assert search._one_trial() is False
    mine = study.trials[1]
    assert mine.state == optuna.trial.TrialState.FAIL and records.kind(mine) == "surplus"
    assert records.count(study.trials).counted == 1  # the other worker's trial only
    listed = csv.DictReader(records.trials_csv(study.trials).splitlines())
    assert [r["number"] for r in listed] == ["0"]  # the surplus trial is not listed


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"the worker ended early: {proc.stdout.read() if proc.stdout else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_study_continues_and_retries_the_interrupted_trial(caches, tmp_path):
    out = tmp_path / "study"
    cmd = _cli(caches, out, 3)
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(out / "trials" / "trial-0001" / "config.yaml", proc)  # trial 1 is training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _journal(out).trials[1].state == optuna.trial.TrialState.RUNNING
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trial 1 was left running by a stopped worker" in done.stdout
    trials = _journal(out).trials
    assert records.count(trials).counted == 3 and records.count(trials).finished == 3
    killed = trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL and records.kind(killed) == "interrupted"
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == killed.params and retry.state == optuna.trial.TrialState.COMPLETE
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == 4
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in finished:  # each trial trained in its own folder, with its own values
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.name == f"trial-{t.number:04d}"
        assert TrainConfig.load(run_dir / "config.yaml").phase2_lr == pytest.approx(
            t.params["phase2_lr"]
        )
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["fail_reason"] for r in rows if r["number"] == "1"] == ["interrupted"]


@pytest.mark.slow
def test_two_workers_share_a_study(caches, tmp_path):
    out = tmp_path / "study"
    cmd = _cli(caches, out, 4)
    procs = [
        subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = _journal(out).trials
    counts = records.count(trials)
    assert counts.counted == counts.finished == 4 and counts.complete == 4
    workers = {t.user_attrs["worker"]["pid"] for t in trials if records.kind(t) == "complete"}
    assert workers == {p.pid for p in procs}  # both did some
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 4


def test_trials_are_logged_as_child_runs_of_the_study_in_mlflow(caches, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    space = SearchSpace.from_dict(
        {"replace": True, "params": {"phase2_lr": {"low": 1e-3, "high": 1e-2}}}
    )
    tune(BASE.replace(phase2_epochs=1), caches["train"], caches["val"], tmp_path / "t", 2,
         space=space, mlflow=True, echo=lambda s: None)  # fmt: skip
    parent_id = _journal(tmp_path / "t").user_attrs["mlflow_run_id"]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["cxr.study"] == "cxr"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == ["trial-0000", "trial-0001"]
    assert {r.data.tags["cxr.trial"] for r in children} == {"0", "1"}
    assert all("val_macro_auc" in r.data.metrics for r in children)
    logged = {a.path for a in client.list_artifacts(parent_id)}
    assert {"best_config.yaml", "optimisation_history.png", "param_importances.png"} <= logged


def test_figures_show_the_history_and_which_parameter_matters():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from cxr.tuning.figures import history_png, importances, importances_png

    study = optuna.create_study(direction="maximize")
    dists = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    for i in range(16):
        x, y = (i * 7 % 16) / 16, (i * 5 % 16) / 16
        study.add_trial(create_trial(params={"x": x, "y": y}, distributions=dists, value=x))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.2}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"}))
    found, why = importances(study)
    assert why is None and found["x"] > found["y"]
    assert history_png(study.trials).startswith(b"\x89PNG")
    assert len(importances_png(study)) > 5000
    few = optuna.create_study(direction="maximize")
    few.add_trial(create_trial(params={"x": 0.5}, distributions={"x": dists["x"]}, value=0.5))
    assert importances(few) == (
        {},
        "parameter importances need at least 4 completed trials (have 1)",
    )
