"""MLflow tracking of training runs: the training callback (the store helpers a study and
``cxr evaluate`` use are in :mod:`cxr.tracking.mlflow_store`).

:class:`MLflowCallback` records one training run as one MLflow run:

- params: every setting of the run's :class:`~cxr.training.TrainConfig` (nested ones
  flattened, ``augment.rotate``; tuples as ``"512,128"``; None as ``"None"``), the labels
  (``n_labels``, ``label_names``), the images per split (``train_images``, ``val_images``)
  and the torch device the run used (``torch_device``; the ``device`` param is the setting);
- metrics, step = epoch (1-based): every numeric value of the epoch's ``history.csv`` row
  (losses, validation macro and per-label AUC, learning rate, images/s, seconds). NaN
  values are not logged; their keys are listed in the tag ``cxr.nan_metrics``;
- tags: ``cxr.version``, ``cxr.git_commit`` (when cxr runs from a git checkout), the caches'
  folders and the sha256 of their ``manifest.json`` (``cxr.train_cache_fingerprint``,
  ``cxr.val_cache_fingerprint``), the run folder;
- artifacts at the end: ``config.yaml``, ``run.json``, ``history.csv`` and
  ``best.safetensors``; :func:`~cxr.tracking.mlflow_store.log_evaluation` adds a test
  report later (``cxr evaluate``).

Where: :func:`~cxr.tracking.mlflow_store.tracking_uri` (the argument, else
``$MLFLOW_TRACKING_URI``, else the SQLite file ``mlflow.db`` in the working folder; view
it with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``). An experiment created here
in a SQLite store keeps its artifacts in the folder ``mlartifacts`` beside the database
file.

The run folder keeps ``mlflow.json`` (tracking URI, experiment and run id): a resumed run
(``cxr train --resume``) logs into the same MLflow run again, and ``cxr evaluate`` finds
it. A run ends FINISHED, FAILED (with the error in the tag ``cxr.error``) or KILLED (Ctrl-C,
a pruned trial); resuming it moves that tag to ``cxr.resumed_after_error``. Only rank 0 of
a DDP job logs.

MLflow is imported on first use (it is slow to import): importing this module is cheap.
Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids (no
global "active run"), so several runs can log from one process. MLflow's usage telemetry
is turned off (``MLFLOW_DISABLE_TELEMETRY=true``) unless the environment sets that
variable already.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr import __version__
from cxr.tracking.mlflow_store import (
    _RUN_FILES,
    ERROR_TAG_CHARS,
    LINK_FILE,
    MLflowNotInstalled,
    _client,
    _experiment_id,
    _flatten,
    _metrics,
    _resolve,
    _tags,
    _write_link,
    cache_fingerprint,
    git_commit,
    mlflow_available,
    run_link,
    view_hint,
)
from cxr.training.callbacks import RunStart, TrainingCallback

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["MLflowCallback"]


def _run_tags(run: RunStart) -> dict[str, str]:
    tags = {"cxr.version": __version__, "cxr.run_dir": str(run.run_dir.resolve())}
    commit = git_commit()
    if commit:
        tags["cxr.git_commit"] = tags["mlflow.source.git.commit"] = commit
    for split, cache in (("train", run.train_cache), ("val", run.val_cache)):
        if cache is None:
            continue
        tags[f"cxr.{split}_cache"] = str(Path(cache).resolve())
        fingerprint = cache_fingerprint(cache)
        if fingerprint:
            tags[f"cxr.{split}_cache_fingerprint"] = fingerprint
    return tags


def _run_params(run: RunStart) -> dict[str, str]:
    params = _flatten(run.config.to_dict())
    params.update(
        n_labels=str(len(run.labels)),
        label_names=",".join(run.labels),
        train_images=str(run.train_images),
        val_images=str(run.val_images),
        torch_device=run.device,
    )
    return params


# the callback ---------------------------------------------------------------------------------
class MLflowCallback(TrainingCallback):
    """Logs a training run to MLflow (what is logged: see :mod:`cxr.tracking.mlflow`).

    Args:
        tracking_uri: the store; default: see
            :func:`~cxr.tracking.mlflow_store.tracking_uri` (a resumed run: the one its
            ``mlflow.json`` names).
        experiment: the experiment of a new run (created when missing).
        run_name: default: the run folder's name.
        parent_run_id: make the new run a child of this one (a study's trials).
        tags: more tags for the run.
        log_model: log ``best.safetensors`` as an artifact at the end.

    After ``on_start`` (rank 0): :attr:`run_id`, :attr:`experiment_id` and the resolved
    :attr:`tracking_uri`. Raises :class:`MLflowNotInstalled` at once without MLflow.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "cxr",
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        log_model: bool = True,
    ) -> None:
        if not mlflow_available():
            raise MLflowNotInstalled()
        if not str(experiment).strip():
            raise ValueError("the MLflow experiment name must not be empty")
        self.tracking_uri: str | None = tracking_uri
        self.experiment = str(experiment)
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.log_model = log_model
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._asked_uri = tracking_uri
        self._client: Any = None
        self._run_dir: Path | None = None
        self._experiment_name = self.experiment
        self._nan_keys: set[str] = set()
        self._notes: list[str] = []

    def on_start(self, run: RunStart) -> None:
        if not run.is_main:
            return
        link = run_link(run.run_dir) if run.start_epoch > 0 else None
        uri = _resolve(self._asked_uri or (link["tracking_uri"] if link else None))
        client = _client(uri)
        self.tracking_uri, self._client, self._run_dir = uri, client, run.run_dir
        self.run_id, self._nan_keys, self._notes = None, set(), []
        self._experiment_name = self.experiment
        logged = {} if link is None else self._reopen(client, link, run.run_dir / LINK_FILE)
        tags = _run_tags(run) | self.tags
        if self.run_id is None:
            self.experiment_id = _experiment_id(client, uri, self.experiment)
            created = client.create_run(
                self.experiment_id, run_name=self.run_name or run.run_dir.name
            )
            self.run_id = str(created.info.run_id)
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
        if run.start_epoch > 0:
            tags["cxr.resumed_at_epoch"] = str(run.start_epoch + 1)
        assert self.experiment_id is not None and self.run_id is not None
        from mlflow.entities import Param

        params = _run_params(run)
        for key, value in params.items():  # MLflow refuses to change a logged param
            if key in logged and logged[key] != value:
                tags[f"cxr.resumed_with.{key}"] = value
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        client.log_batch(self.run_id, params=new, tags=_tags(tags))
        _write_link(run.run_dir, uri, self.experiment_id, self.run_id)
        if run.start_epoch > 0:  # epochs before the resume that the MLflow run lacks
            self._backfill(run.run_dir / "history.csv")

    def _reopen(self, client: MlflowClient, link: dict[str, str], path: Path) -> dict[str, str]:
        """Continue the run ``link`` names (status RUNNING again); returns its params. When
        the run is gone, warns and leaves :attr:`run_id` None (a new run is started)."""
        from mlflow.exceptions import MlflowException

        found: Run | None
        try:
            found = client.get_run(link["run_id"])
        except MlflowException:
            found = None
        if found is None or found.info.lifecycle_stage == "deleted":
            warnings.warn(
                f"MLflow run {link['run_id']} named by {path} is not in {self.tracking_uri}; "
                "logging the resumed run as a new MLflow run",
                stacklevel=2,
            )
            return {}
        self.run_id, self.experiment_id = link["run_id"], str(found.info.experiment_id)
        self._experiment_name = client.get_experiment(self.experiment_id).name
        client.update_run(self.run_id, status="RUNNING")
        error = found.data.tags.get("cxr.error")
        if error is not None:  # the run goes on: its earlier stop is history
            client.delete_tag(self.run_id, "cxr.error")
            client.set_tag(self.run_id, "cxr.resumed_after_error", error)
        nan_tag = found.data.tags.get("cxr.nan_metrics", "")
        self._nan_keys = {k for k in nan_tag.split(",") if k}
        notes = found.data.tags.get("cxr.notes", "")
        self._notes = [n for n in notes.split("; ") if n]
        return dict(found.data.params)

    def _backfill(self, history: Path) -> None:
        """Log the epochs of ``history.csv`` the MLflow run lacks (a run stopped between
        saving an epoch and logging it, or by a callback called before this one)."""
        if not history.is_file() or self.run_id is None:
            return
        logged = {m.step for m in self._client.get_metric_history(self.run_id, "seconds")}
        with history.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for raw in rows:
            row: dict[str, Any] = {}
            for key, text in raw.items():
                try:
                    row[key] = float(text)
                except (TypeError, ValueError):
                    row[key] = text
            if isinstance(row.get("epoch"), float) and int(row["epoch"]) not in logged:
                row["epoch"] = int(row["epoch"])
                self.on_epoch(row)

    def on_epoch(self, row: dict[str, Any]) -> None:
        if self.run_id is None or self._client is None:
            return
        step = int(row["epoch"])
        metrics, skipped = _metrics({k: v for k, v in row.items() if k != "epoch"}, step)
        tags: dict[str, str] = {}
        if skipped and not set(skipped) <= self._nan_keys:
            self._nan_keys.update(skipped)
            tags["cxr.nan_metrics"] = ",".join(sorted(self._nan_keys))
        if isinstance(row.get("note"), str) and row["note"]:
            self._notes.append(f"epoch {step}: {row['note']}")
            tags["cxr.notes"] = "; ".join(self._notes)
        self._client.log_batch(self.run_id, metrics=metrics, tags=_tags(tags))

    def _log_files(self, names: Iterable[str]) -> None:
        assert self._run_dir is not None
        for name in names:
            if (self._run_dir / name).is_file():
                self._client.log_artifact(self.run_id, str(self._run_dir / name))

    def on_end(self, result: Any) -> None:
        if self.run_id is None or self._client is None:
            return
        best_epoch = int(getattr(result, "best_epoch", -1)) + 1
        if best_epoch > 0:
            best, _ = _metrics({"best_val_macro_auc": result.best_auc}, best_epoch)
            tags = _tags({"cxr.best_epoch": str(best_epoch)})
            self._client.log_batch(self.run_id, metrics=best, tags=tags)
        self._log_files(_RUN_FILES + (("best.safetensors",) if self.log_model else ()))
        self._client.set_terminated(self.run_id, "FINISHED")
        self._client = None

    def on_error(self, error: BaseException) -> None:
        if self.run_id is None or self._client is None:
            return
        killed = isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrialPruned"
        status = "KILLED" if killed else "FAILED"
        text = " ".join(f"{type(error).__name__}: {error}".split())[:ERROR_TAG_CHARS]
        try:  # never hide the run's own error behind a tracking one
            self._client.log_batch(self.run_id, tags=_tags({"cxr.error": text}))
            self._log_files(_RUN_FILES)
            self._client.set_terminated(self.run_id, status)
        except Exception as err:
            warnings.warn(f"MLflow: could not mark run {self.run_id} {status}: {err}", stacklevel=2)
        self._client = None

    def describe(self) -> str | None:
        """One line: the run, its experiment, the store and how to view it (None before
        ``on_start`` or on ranks other than 0)."""
        if self.run_id is None or self.tracking_uri is None:
            return None
        uri = self.tracking_uri
        return (
            f"MLflow: run {self.run_id} in experiment {self._experiment_name} at {uri}; "
            f"view: {view_hint(uri, self.experiment_id, self.run_id)}"
        )
