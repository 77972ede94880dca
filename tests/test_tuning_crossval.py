"""Cross-validated studies (cxr.tuning.crossval, ``cxr tune --folds K``): every fold of every
trial is trained and scored on its own held-out patients, the value is the mean of the folds,
the pruner can stop a trial between folds, and a study keeps its folds."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cxr.cache import PreparedCache
from cxr.cli import build_parser, main
from cxr.cli.train import config_from_args
from cxr.errors import CxrError
from cxr.training import TrainConfig
from cxr.training.results import TrainResult
from cxr.tuning import SearchSpace, TuneError, tune, tune_summary
from cxr.tuning.crossval import CV_ATTR, CvPlan, Fold, check_folds, fold_stats
from cxr.tuning.trial import run_trial

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
SPACE = SearchSpace.from_dict(
    {"replace": True, "params": {"phase2_lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
)


@pytest.fixture(scope="module")
def caches(phantom_caches_300):
    return phantom_caches_300


def _quiet(line: str) -> None:
    pass


def _journal(out: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="cxr", storage=storage)


def _best_auc(run_dir: Path) -> float:
    return max(float(r["val_macro_auc"]) for r in csv.DictReader((run_dir / "history.csv").open()))


def test_a_study_with_folds_scores_every_fold_of_every_trial(caches, tmp_path):
    out = tmp_path / "study"
    result = tune(BASE, caches["train"], None, out, 2, folds=3, space=SPACE, pruner="none",
                  echo=_quiet)  # fmt: skip
    train = PreparedCache(caches["train"])
    assert result.counts["complete"] == 2 and result.cv_folds == 3
    # the fold assignment: every training image once, a patient's images in one fold
    rows = list(csv.DictReader((out / "folds.csv").open()))
    assert [r["path"] for r in rows] == train.table.paths
    assert {r["fold"] for r in rows} == {"1", "2", "3"}
    fold_of: dict[str, set[str]] = {}
    for r in rows:
        fold_of.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of.values())
    # the fold caches: held-out sets disjoint, covering TRAIN; each trains on the others
    held = {i: PreparedCache(out / "folds" / f"fold-{i}" / "heldout") for i in (1, 2, 3)}
    rest = {i: PreparedCache(out / "folds" / f"fold-{i}" / "train") for i in (1, 2, 3)}
    paths = {i: set(held[i].table.paths) for i in held}
    assert sum(len(p) for p in paths.values()) == len(train)
    assert set().union(*paths.values()) == set(train.table.paths)
    for i in held:
        assert paths[i] == {r["path"] for r in rows if r["fold"] == str(i)}
        assert set(rest[i].table.paths) == set(train.table.paths) - paths[i]
        assert not set(held[i].table.patient_ids) & set(rest[i].table.patient_ids)
    assert result.fold_sizes == tuple(
        (len(set(held[i].table.patient_ids)), len(held[i])) for i in (1, 2, 3)
    )
    # every trial: three trainings, each scored on its fold's held-out images
    trials = _journal(out).trials
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        aucs = t.user_attrs["fold_aucs"]
        assert len(aucs) == 3
        for i in (1, 2, 3):
            meta = json.loads((run_dir / f"fold-{i}" / "run.json").read_text())
            assert meta["val_cache"] == str(held[i].path.resolve())
            assert meta["train_cache"] == str(rest[i].path.resolve())
            assert aucs[i - 1] == pytest.approx(_best_auc(run_dir / f"fold-{i}"))
        assert t.value == pytest.approx(np.mean(aucs))
        assert t.user_attrs["fold_auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
        assert t.intermediate_values == pytest.approx(
            {1: aucs[0], 2: np.mean(aucs[:2]), 3: np.mean(aucs)}
        )
    best = max(trials, key=lambda t: t.value)
    assert result.best_value == pytest.approx(best.value)
    assert result.best_fold_aucs == pytest.approx(best.user_attrs["fold_aucs"])
    listed = list(csv.DictReader((out / "trials.csv").open()))
    assert [len(r["fold_aucs"].split(";")) for r in listed] == [3, 3]
    assert json.loads((out / "best_trial.json").read_text())["cv_folds"] == 3
    text = tune_summary(result)
    assert "3-fold cross-validation over TRAIN_CACHE" in text and "VAL_CACHE is not used" in text
    p, n = result.fold_sizes[0]
    assert f"fold 1: {p} patients, {n} images" in text
    # the fold caches are made once: running the study again reuses them untouched
    stamp = os.stat(held[1].path / "pixels.npy").st_mtime_ns
    again = tune(BASE, caches["train"], None, out, 2, folds=3, space=SPACE, echo=_quiet)
    assert again.counts == result.counts
    assert os.stat(held[1].path / "pixels.npy").st_mtime_ns == stamp
    # a study keeps its folds and its training cache
    with pytest.raises(TuneError, match="was started with --folds 3.*continue it with --folds 3"):
        tune(BASE, caches["train"], None, out, 3, folds=2, space=SPACE, echo=_quiet)
    with pytest.raises(TuneError, match="not comparable with no --folds"):
        tune(BASE, caches["train"], caches["val"], out, 3, space=SPACE, echo=_quiet)
    with pytest.raises(TuneError, match=r"training cache .* changed since study 'cxr'"):
        tune(BASE, caches["val"], None, out, 3, folds=3, space=SPACE, echo=_quiet)
    assert len(_journal(out).trials) == 2  # none of these ran a trial


class _PruneAll(optuna.pruners.BasePruner):
    """Prunes every trial at its first report."""

    def prune(self, study, trial) -> bool:
        return True


def test_the_pruner_stops_a_trial_between_folds(caches, tmp_path):
    lines: list[str] = []
    result = tune(BASE, caches["train"], None, tmp_path, 1, folds=3, space=SPACE,
                  pruner=_PruneAll(), echo=lines.append)  # fmt: skip
    assert result.counts["pruned"] == 1 and result.best_trial is None
    (trial,) = _journal(tmp_path).trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert len(trial.user_attrs["fold_aucs"]) == 1
    run_dir = tmp_path / "trials" / "trial-0000"
    assert (run_dir / "fold-1" / "best.safetensors").is_file()
    assert not (run_dir / "fold-2").exists()  # the second fold never started
    assert any(line.startswith("trial 0 pruned after fold 1 of 3 (mean ") for line in lines)
    assert any(line.startswith("scoring each trial by 3-fold cross") for line in lines)


class _Cache:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _plan(k: int = 3) -> CvPlan:
    folds = [Fold(i, _Cache(20), _Cache(10), 4, 10) for i in range(1, k + 1)]  # type: ignore[arg-type]
    return CvPlan(tuple(folds), seed=0)


def _fake_train(monkeypatch, aucs: list[float | Exception]) -> list[Path]:
    """train() that returns (or raises) the next of ``aucs``; returns the run folders."""
    calls: list[Path] = []

    def train(config, train_cache, val_cache, run_dir, **kwargs):
        calls.append(Path(run_dir))
        got = aucs[len(calls) - 1]
        if isinstance(got, Exception):
            raise got
        return TrainResult(Path(run_dir), got, 0, 2, [])

    monkeypatch.setattr("cxr.training.train", train)
    return calls


def test_the_value_is_the_mean_of_the_folds_and_each_fold_is_reported(tmp_path, monkeypatch):
    calls = _fake_train(monkeypatch, [0.6, 0.8, 0.7])
    study = optuna.create_study(direction="maximize")
    done = run_trial(study, study.ask(), SPACE, BASE, None, None, tmp_path, cv=_plan())
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(0.7)
    assert [p.name for p in calls] == ["fold-1", "fold-2", "fold-3"]
    assert done.intermediate_values == pytest.approx({1: 0.6, 2: 0.7, 3: 0.7})
    assert done.user_attrs["fold_aucs"] == [0.6, 0.8, 0.7]
    assert done.user_attrs["fold_auc_sd"] == pytest.approx(0.1)
    assert done.user_attrs["epochs"] == 6 and done.user_attrs["cv_folds"] == 3


def test_a_failing_fold_fails_the_trial_naming_the_fold(tmp_path, monkeypatch):
    _fake_train(monkeypatch, [0.6, CxrError("bad batch"), 0.7])
    study = optuna.create_study(direction="maximize")
    done = run_trial(study, study.ask(), SPACE, BASE, None, None, tmp_path, cv=_plan())
    assert done.state == TrialState.FAIL
    assert done.user_attrs["fail_reason"] == "fold 2 of 3: CxrError: bad batch"
    _fake_train(monkeypatch, [float("nan")])
    done = run_trial(study, study.ask(), SPACE, BASE, None, None, tmp_path, cv=_plan())
    assert done.user_attrs["fail_reason"].startswith("fold 1 of 3: TrialFailed: no epoch gave")


def test_fold_stats_mean_and_spread():
    assert fold_stats([0.5, 0.7]) == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    assert fold_stats([0.5]) == (0.5, None)


def test_a_study_records_its_folds_and_refuses_others(caches, tmp_path):
    train = PreparedCache(caches["train"])
    plain = optuna.create_study(direction="maximize")
    assert check_folds(plain, 0, train, 7, "s", tmp_path) == 7
    assert plain.user_attrs[CV_ATTR] == {"folds": 0, "seed": 7}
    with pytest.raises(TuneError, match="scores its trials on VAL_CACHE.*with no --folds"):
        check_folds(plain, 4, train, 7, "s", tmp_path)
    older = optuna.create_study(direction="maximize")  # trials, no record: an older cxr's
    older.add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(TuneError, match="scores its trials on VAL_CACHE"):
        check_folds(older, 3, train, 0, "s", tmp_path)
    cv = optuna.create_study(direction="maximize")
    assert check_folds(cv, 3, train, 5, "s", tmp_path) == 5
    assert check_folds(cv, 3, train, 9, "s", tmp_path) == 5  # the folds keep their seed


def test_cli_folds_needs_no_val_cache_and_checks_k(caches, tmp_path, capsys):
    base = [
        "tune", str(caches["train"]), "--out", str(tmp_path / "study"), "--trials", "1",
        "--backbone", "cxr-small-cnn", "--phase1-epochs", "0", "--phase2-epochs", "1",
        "--batch-size", "32", "--calibration", "none", "--device", "cpu", "--pruner", "none",
    ]  # fmt: skip
    assert main([*base, "--folds", "21"]) == 2
    assert "--folds must be from 2 to 20" in capsys.readouterr().err
    assert main(base) == 2  # no folds: VAL_CACHE is needed
    assert "give TRAIN_CACHE and VAL_CACHE" in capsys.readouterr().err
    assert main([*base, "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trial 0 complete: " in printed and "(mean of 2 folds: " in printed
    assert "scored by 2-fold cross-validation over TRAIN_CACHE" in printed
    assert (tmp_path / "study" / "trials" / "trial-0000" / "fold-2" / "history.csv").is_file()


def test_cli_folds_cross_validates_and_probe_folds_sets_the_base_config():
    args = build_parser().parse_args(["tune", "t", "--folds", "3", "--probe-folds", "2"])
    assert args.cv_folds == 3 and args.folds == 2  # the base config's field (probe recipe)
    args = build_parser().parse_args(["tune", "t", "v"])
    assert args.cv_folds == 0 and config_from_args(args).folds == TrainConfig().folds


def test_each_fold_is_its_own_mlflow_child_run_of_the_study(tmp_path):
    pytest.importorskip("mlflow")
    from cxr.tuning.study import _Search

    study = optuna.create_study(direction="maximize")
    search = _Search(
        study, study._storage, "memory", "cxr", BASE, SPACE, (None, None), tmp_path, 1, 0,
        "parent-id", "cxr", _quiet, False, _plan(),
    )  # fmt: skip
    (fold,) = search._callbacks(3, 2)
    assert fold.run_name == "trial-0003-fold-2" and fold.parent_run_id == "parent-id"
    assert fold.tags == {"cxr.study": "cxr", "cxr.trial": "3", "cxr.fold": "2"}
    (plain,) = search._callbacks(3)
    assert plain.run_name == "trial-0003" and "cxr.fold" not in plain.tags
