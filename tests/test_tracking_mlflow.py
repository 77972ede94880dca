"""MLflow tracking (cxr.tracking.mlflow): a training run as one MLflow run, resumed runs,
failures, child runs, the CLI (`cxr train --mlflow`, `cxr evaluate`) and a missing MLflow.

Every store is a SQLite file under a pytest temporary folder; nothing is written in the
repository and nothing uses the network.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from cxr import __version__
from cxr.cache import PreparedCache
from cxr.cli import main
from cxr.tracking import (
    MLflowCallback,
    MLflowNotInstalled,
    end_run,
    log_artifacts,
    mlflow_available,
    start_run,
    tracking_requested,
    tracking_uri,
)
from cxr.tracking.mlflow_store import git_commit
from cxr.training import AugmentConfig, TrainConfig, TrainingInterrupted, resume, train
from cxr.training.callbacks import RunStart, TrainingCallback

#: SQLAlchemy's deprecation notice about MLflow's own store code (nothing cxr can change)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

#: A tiny run: 1 + 1 epochs of the small CNN, with a nested and a tuple setting to flatten.
TINY = TrainConfig(
    backbone="cxr-small-cnn",
    hidden=(16, 8),
    phase1_epochs=1,
    phase2_epochs=1,
    batch_size=64,
    device="cpu",
    seed=0,
    augment=AugmentConfig(rotate=3.0),
)


def _uri(folder: Path) -> str:
    return f"sqlite:///{(folder.resolve() / 'mlflow.db').as_posix()}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def client_for():
    """MlflowClient(uri) for reading runs back (skips without the tune extra)."""
    tracking = pytest.importorskip("mlflow.tracking", reason="the tune extra is not installed")
    return lambda uri: tracking.MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def phantoms(phantom_caches_300) -> dict[str, Path]:
    return phantom_caches_300


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating a store runs MLflow's schema migrations)."""
    return _uri(tmp_path_factory.mktemp("mlflow_store"))


class _StopAfterFirstEpoch(TrainingCallback):
    """Ctrl-C right after epoch 1 is saved, before the callbacks after this one see it."""

    def on_epoch(self, row):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def tracked(client_for, store, phantoms, tmp_path_factory):
    """TINY interrupted after epoch 1 (tracked), then resumed to the end with a new callback."""
    c = phantoms
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    first = MLflowCallback(store, experiment="tests")
    with pytest.raises(TrainingInterrupted):
        train(
            TINY,
            c["train"],
            c["val"],
            run_dir,
            progress=False,
            echo=lambda s: None,
            callbacks=[_StopAfterFirstEpoch(), first],
        )
    client = client_for(store)
    assert first.run_id is not None
    killed = client.get_run(first.run_id)
    second = MLflowCallback(store)  # no experiment given: the run's own is continued
    result = resume(run_dir, progress=False, echo=lambda s: None, callbacks=[second])
    return SimpleNamespace(
        run_dir=run_dir, first=first, killed=killed, second=second, result=result, client=client
    )


def test_a_run_logs_params_metrics_tags_and_files(tracked, store, phantoms):
    run = tracked.client.get_run(tracked.second.run_id)
    assert run.info.status == "FINISHED"
    params, tags, c = run.data.params, run.data.tags, phantoms
    # every setting, flattened; the labels, image counts and device of the run
    assert params["backbone"] == "cxr-small-cnn" and params["phase2_epochs"] == "1"
    assert params["augment.rotate"] == "3.0" and params["augment.hflip"] == "False"
    assert params["hidden"] == "16,8" and params["labels"] == "None"
    assert params["device"] == "cpu" and params["torch_device"] == "cpu"
    labels = tuple(params["label_names"].split(","))
    assert params["n_labels"] == str(len(labels)) and len(labels) > 1
    meta = json.loads((tracked.run_dir / "run.json").read_text())
    assert params["train_images"] == str(len(PreparedCache(c["train"])))
    assert params["val_images"] == str(len(PreparedCache(c["val"])))
    assert meta["val_cache"] == tags["cxr.val_cache"]
    # one value per epoch, steps 1..E, equal to history.csv; per-label AUC (or named as NaN)
    history = tracked.client.get_metric_history(run.info.run_id, "val_macro_auc")
    assert sorted(m.step for m in history) == [1, 2]
    expected = {r["epoch"]: r["val_macro_auc"] for r in tracked.result.history}
    assert {m.step: m.value for m in history} == pytest.approx(expected)
    nan = set(filter(None, tags.get("cxr.nan_metrics", "").split(",")))
    for name in labels:
        assert f"val_auc_{name}" in run.data.metrics or f"val_auc_{name}" in nan, name
    for key in ("lr", "train_loss", "val_loss", "images_per_second", "seconds", "phase"):
        assert len(tracked.client.get_metric_history(run.info.run_id, key)) == 2, key
    assert run.data.metrics["best_val_macro_auc"] == pytest.approx(tracked.result.best_auc)
    # provenance
    assert tags["cxr.version"] == __version__
    assert tags["cxr.train_cache_fingerprint"] == _sha256(c["train"] / "manifest.json")
    assert tags["cxr.val_cache_fingerprint"] == _sha256(c["val"] / "manifest.json")
    assert tags["cxr.train_cache"] == str(c["train"].resolve())
    assert tags.get("cxr.git_commit") == git_commit()
    assert tags["mlflow.runName"] == "run" and tags["cxr.best_epoch"] == str(
        tracked.result.best_epoch + 1
    )
    # the run's files, in the artifact folder beside the database
    names = {f.path for f in tracked.client.list_artifacts(run.info.run_id)}
    assert {"best.safetensors", "config.yaml", "history.csv", "run.json"} <= names
    db_folder = Path(store[len("sqlite:///") :]).parent
    assert run.info.artifact_uri.startswith((db_folder / "mlartifacts").as_uri())
    stored = Path(url2pathname(urlparse(run.info.artifact_uri).path)) / "best.safetensors"
    assert stored.read_bytes() == (tracked.run_dir / "best.safetensors").read_bytes()


def test_a_resumed_run_continues_its_mlflow_run(tracked, store):
    # Ctrl-C: the run was KILLED, with the error; a callback before the MLflow one stopped
    # the run, so epoch 1 was saved in history.csv but never logged...
    assert tracked.killed.info.status == "KILLED"
    assert tracked.killed.data.tags["cxr.error"].startswith("TrainingInterrupted: interrupted;")
    assert "val_macro_auc" not in tracked.killed.data.metrics
    link = json.loads((tracked.run_dir / "mlflow.json").read_text())
    assert link == {
        "tracking_uri": store,
        "experiment_id": tracked.first.experiment_id,
        "run_id": tracked.first.run_id,
    }
    # ...the resume logs into the same run, adds epoch 1 from history.csv, and logs each
    # epoch once
    assert tracked.second.run_id == tracked.first.run_id
    assert tracked.second.experiment_id == tracked.first.experiment_id
    run = tracked.client.get_run(tracked.first.run_id)
    assert run.data.tags["cxr.resumed_at_epoch"] == "2" and "cxr.error" not in run.data.tags
    assert run.data.tags["cxr.resumed_after_error"].startswith("TrainingInterrupted:")
    for key in ("val_macro_auc", "train_loss", "seconds"):
        steps = [m.step for m in tracked.client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2], key
    line = tracked.second.describe()
    assert line is not None and tracked.first.run_id in line and "experiment tests" in line
    assert f"mlflow ui --backend-store-uri {store}" in line


class TrialPruned(Exception):
    """Stands for optuna.TrialPruned (recognised by its name)."""


def test_failed_and_child_runs(client_for, store, tmp_path):
    client = client_for(store)
    parent = start_run(
        store,
        "tests",
        "study",
        params={"n_trials": 2, "space": {"lr": (1e-4, 1e-2)}},
        tags={"kind": "study"},
    )
    assert client.get_run(parent).data.params["space.lr"] == "0.0001,0.01"
    cb = MLflowCallback(store, experiment="tests", parent_run_id=parent, tags={"trial": "0"})
    (tmp_path / "t0").mkdir()
    cb.on_start(RunStart(tmp_path / "t0", TINY, ("a", "b"), 10, 5, "cpu"))
    cb.on_epoch({"epoch": 1, "train_loss": 0.5, "val_macro_auc": math.nan, "note": "early stop"})
    cb.on_error(ValueError("boom " * 400))
    run = client.get_run(cb.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["cxr.error"].startswith("ValueError: boom boom")
    assert len(run.data.tags["cxr.error"]) <= 500
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["trial"] == "0"
    assert run.data.tags["cxr.nan_metrics"] == "val_macro_auc"
    assert run.data.tags["cxr.notes"] == "epoch 1: early stop"
    assert run.data.metrics == {"train_loss": 0.5}
    # a pruned trial is KILLED; rank 1 of a DDP job logs nothing
    pruned = MLflowCallback(store, experiment="tests", parent_run_id=parent)
    (tmp_path / "t1").mkdir()
    pruned.on_start(RunStart(tmp_path / "t1", TINY, ("a",), 10, 5, "cpu"))
    pruned.on_error(TrialPruned("trial 1 pruned at epoch 1"))
    assert client.get_run(pruned.run_id).info.status == "KILLED"
    other = MLflowCallback(store, experiment="tests")
    other.on_start(RunStart(tmp_path / "t1", TINY, ("a",), 10, 5, "cpu", is_main=False))
    other.on_epoch({"epoch": 1, "train_loss": 0.1})
    assert other.run_id is None and other.describe() is None
    # the parent ends; its children are found by the tag
    end_run(store, parent)
    assert client.get_run(parent).info.status == "FINISHED"
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {r.info.run_id for r in children} == {cb.run_id, pruned.run_id}
    log_artifacts(store, parent, [tmp_path / "t0" / "mlflow.json"], artifact_path="links")
    assert [f.path for f in client.list_artifacts(parent, "links")] == ["links/mlflow.json"]
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        log_artifacts(store, parent, [tmp_path / "nothing.txt"])


def test_tracking_uri_and_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == _uri(tmp_path)
    inside = (tmp_path.resolve() / "sub" / "x.db").as_posix()
    assert tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{inside}"
    assert tracking_uri("http://localhost:5000") == "http://localhost:5000"
    assert not tracking_requested() and tracking_requested(True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking_requested() and tracking_uri() == "http://tracker:5000"
    assert tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_cli_train_evaluate_and_resume_log_into_one_run(
    client_for, phantoms, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    c = phantoms
    argv = ["train", str(c["train"]), str(c["val"]), "--out", "run", "--mlflow", "--no-progress"]
    argv += ["--backbone", "cxr-small-cnn", "--phase1-epochs", "0", "--phase2-epochs", "1"]
    assert main([*argv, "--batch-size", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    uri = _uri(tmp_path)
    assert (tmp_path / "mlflow.db").is_file()
    link = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert link["tracking_uri"] == uri
    said = [line for line in out.splitlines() if line.startswith("MLflow: run ")]
    assert said == [
        f"MLflow: run {link['run_id']} in experiment cxr at {uri}; "
        f"view: mlflow ui --backend-store-uri {uri}"
    ]
    client = client_for(uri)
    run = client.get_run(link["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "cxr"
    assert run.info.artifact_uri.startswith((tmp_path.resolve() / "mlartifacts").as_uri())
    # evaluating the best model logs the test metrics and the report into the same run
    model = tmp_path / "run" / "best.safetensors"
    argv = ["evaluate", str(c["test"]), "--model", str(model), "--out", "eval"]
    assert main([*argv, "--bootstrap", "0", "--no-progress"]) == 0
    assert f"logged into run {link['run_id']}" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    metrics = client.get_run(link["run_id"]).data.metrics
    assert metrics["test_macro_auc"] == pytest.approx(report["summary"]["macro_auc"])
    first = report["labels"][0]
    assert metrics[f"test_auc_{first['label']}"] == pytest.approx(first["auc"])
    logged = {f.path for f in client.list_artifacts(link["run_id"], "evaluation/eval")}
    assert "evaluation/eval/report.json" in logged
    # --resume continues the tracked run without --mlflow
    assert main(["train", "--resume", "run", "--no-progress"]) == 0
    assert f"MLflow: run {link['run_id']} in experiment cxr" in capsys.readouterr().out
    assert client.get_run(link["run_id"]).info.status == "FINISHED"


def test_missing_mlflow_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not mlflow_available()
    with pytest.raises(MLflowNotInstalled, match=r"pip install 'cxr\[tune\]'") as caught:
        MLflowCallback()
    assert isinstance(caught.value, ImportError)
    with pytest.raises(MLflowNotInstalled):
        start_run(_uri(tmp_path), "x", "y")
    argv = ["train", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--mlflow"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "cxr train: error: MLflow tracking needs the tune extra: pip install 'cxr[tune]'\n"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(tmp_path))
    argv = ["train", "--resume", str(tmp_path / "no-run")]
    assert main(argv) == 2
    assert "because MLFLOW_TRACKING_URI is set" in capsys.readouterr().err
    assert main([*argv, "--no-mlflow"]) == 2  # tracking off: the missing run is the error
    err = capsys.readouterr().err
    assert "tune extra" not in err and "no such run folder" in err


def test_importing_cxr_tracking_and_train_help_do_not_import_mlflow():
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        import cxr.tracking
        from cxr.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["train", "--help"])
            except SystemExit:
                pass
        assert "--mlflow-uri" in out.getvalue()
        assert "mlflow" not in sys.modules, "mlflow was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
