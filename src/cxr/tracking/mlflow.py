"""MLflow tracking of training runs: a training callback, and the helpers a study uses.

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
  ``best.safetensors``; :func:`log_evaluation` adds a test report later (``cxr evaluate``).

Where: :func:`tracking_uri` (the argument, else ``$MLFLOW_TRACKING_URI``, else the SQLite
file ``mlflow.db`` in the working folder; view it with ``mlflow ui --backend-store-uri
sqlite:///mlflow.db``). An experiment created here in a SQLite store keeps its artifacts in
the folder ``mlartifacts`` beside the database file.

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
import functools
import hashlib
import importlib.util
import json
import logging
import math
import numbers
import os
import re
import shlex
import subprocess
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr import __version__
from cxr.training.callbacks import RunStart, TrainingCallback

if TYPE_CHECKING:
    from mlflow.entities import Metric, Run, RunTag
    from mlflow.tracking import MlflowClient

__all__ = [
    "LINK_FILE",
    "MLflowCallback",
    "MLflowNotInstalled",
    "end_run",
    "log_artifacts",
    "log_evaluation",
    "mlflow_available",
    "run_link",
    "start_run",
    "tracking_requested",
    "tracking_uri",
]

#: The file in a run folder that names its MLflow run.
LINK_FILE = "mlflow.json"
#: Characters of an error message kept in the ``cxr.error`` tag.
ERROR_TAG_CHARS = 500
_INSTALL = "MLflow tracking needs the tune extra: pip install 'cxr[tune]'"
#: Files of a run folder logged as artifacts when the run ends (the model besides).
_RUN_FILES = ("config.yaml", "run.json", "history.csv")


class MLflowNotInstalled(ImportError):
    """MLflow is not installed; the message names the extra that brings it."""

    def __init__(self, message: str = _INSTALL) -> None:
        super().__init__(message)


def mlflow_available() -> bool:
    """Whether the ``mlflow`` package is installed (without importing it)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
        return False


def tracking_uri(uri: str | None = None) -> str:
    """Where runs are logged: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file
    ``mlflow.db`` in the working folder. A relative SQLite path is made absolute (against
    the working folder), so that a run resumed elsewhere finds its store."""
    chosen = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not chosen:
        return f"sqlite:///{(Path.cwd().resolve() / 'mlflow.db').as_posix()}"
    db = _sqlite_path(chosen)
    if db is not None and not db.is_absolute():
        return f"sqlite:///{(Path.cwd().resolve() / db).as_posix()}"
    return chosen


def tracking_requested(flag: bool = False) -> bool:
    """Whether tracking is on: ``flag`` (``--mlflow``) or ``$MLFLOW_TRACKING_URI`` is set."""
    return bool(flag) or bool(os.environ.get("MLFLOW_TRACKING_URI", "").strip())


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _artifact_root(uri: str) -> str | None:
    """Artifact folder of a new experiment: ``mlartifacts`` beside a SQLite file; None
    (MLflow's or the server's choice) for other stores."""
    db = _sqlite_path(uri)
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def _client(uri: str) -> MlflowClient:
    # MLflow reports usage to its developers over the network unless told not to; cxr runs
    # offline with medical data: off unless the user set MLFLOW_DISABLE_TELEMETRY
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not mlflow_available():
        raise MLflowNotInstalled()
    from mlflow.tracking import MlflowClient

    # creating a SQLite store logs its schema set-up and each migration; keep the warnings
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


# links between run folders and MLflow runs ------------------------------------------------
def run_link(run_dir: str | Path) -> dict[str, str] | None:
    """The MLflow run a run folder was logged to (its ``mlflow.json``), or None.

    Returns ``{"tracking_uri", "experiment_id", "run_id"}``. A damaged file is an error
    naming it.
    """
    path = Path(run_dir) / LINK_FILE
    if not path.is_file():
        return None
    fix = "delete it to log the run into a new MLflow run"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path} cannot be read as JSON; {fix}") from None
    keys = ("tracking_uri", "experiment_id", "run_id")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in keys):
        raise ValueError(f"{path} must hold the strings {', '.join(keys)}; {fix}")
    return {k: data[k] for k in keys}


def _write_link(run_dir: Path, uri: str, experiment_id: str, run_id: str) -> None:
    path = run_dir / LINK_FILE
    tmp = path.with_name(path.name + ".tmp")
    link = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
    tmp.write_text(json.dumps(link, indent=2) + "\n")
    os.replace(tmp, path)


# plain run operations (a study's parent run, a test report) ---------------------------------
def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (artifacts: see _artifact_root)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artifact_root(uri)))
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} at {uri} was deleted; restore it (mlflow experiments "
            f"restore --experiment-id {found.experiment_id}) or choose another name"
        )
    return str(found.experiment_id)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Params as strings: nested mappings as ``outer.inner``, sequences as ``"a,b"``,
    None as ``"None"``."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = str(value)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tags(values: Mapping[str, str]) -> list[RunTag]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in values.items()]


def _metric_key(key: str) -> str:
    """``key`` with characters MLflow refuses in a metric name replaced by ``_``."""
    return re.sub(r"[^\w./\- ]", "_", key)


def _metrics(values: Mapping[str, Any], step: int) -> tuple[list[Metric], list[str]]:
    """The finite numeric values as metrics at ``step``, and the keys whose value is NaN or
    infinite (MLflow stores those badly; they are left out)."""
    from mlflow.entities import Metric

    stamp = _now_ms()
    metrics: list[Metric] = []
    skipped: list[str] = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(float(value)):
            metrics.append(Metric(_metric_key(key), float(value), stamp, step))
        else:
            skipped.append(key)
    return metrics, skipped


def start_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Start a run (status RUNNING) in ``experiment`` (created when missing); returns its id.

    Args:
        tracking_uri: the store (see :func:`tracking_uri`; None: the default).
        params: logged once; nested mappings and sequences are flattened to strings.
        parent_run_id: the new run is a child of that run (tag ``mlflow.parentRunId``).
    """
    uri = _resolve(tracking_uri)
    client = _client(uri)
    all_tags = {"cxr.version": __version__, **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags.setdefault("cxr.git_commit", commit)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(
        _experiment_id(client, uri, experiment), tags=all_tags, run_name=run_name
    )
    if params:
        from mlflow.entities import Param

        flat = _flatten(params)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
    return str(run.info.run_id)


def end_run(tracking_uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """End a run: ``status`` is FINISHED, FAILED or KILLED."""
    _client(_resolve(tracking_uri)).set_terminated(run_id, status)


def log_artifacts(
    tracking_uri: str | None,
    run_id: str,
    paths: Iterable[str | Path],
    artifact_path: str | None = None,
) -> None:
    """Copy files and folders into a run's artifacts, under ``artifact_path`` (a folder as
    ``artifact_path/<its name>/...``). A missing path is an error naming it (nothing logged)."""
    items = [Path(p) for p in paths]
    missing = [str(p) for p in items if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot log to MLflow run {run_id}: no such file {missing[0]}")
    client = _client(_resolve(tracking_uri))
    for item in items:
        if item.is_dir():
            inner = f"{artifact_path}/{item.name}" if artifact_path else item.name
            client.log_artifacts(run_id, str(item), artifact_path=inner)
        else:
            client.log_artifact(run_id, str(item), artifact_path=artifact_path)


def log_evaluation(
    model_path: str | Path,
    report_dir: str | Path,
    metrics: Mapping[str, float],
    tracking_uri: str | None = None,
) -> str | None:
    """Log a test evaluation into the MLflow run that trained ``model_path``.

    When the model's folder has ``mlflow.json`` (a tracked run), logs ``metrics`` with the
    prefix ``test_`` (NaN values left out), the tag ``cxr.test_report`` (the report folder)
    and the report folder as artifacts under ``evaluation/<folder name>``; returns the run id.
    Otherwise returns None.

    Args:
        tracking_uri: the store; default: the one ``mlflow.json`` names.
    """
    link = run_link(Path(model_path).parent)
    if link is None:
        return None
    uri = _resolve(tracking_uri or link["tracking_uri"])
    client, run_id = _client(uri), link["run_id"]
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise ValueError(
            f"MLflow run {run_id} named by {Path(model_path).parent / LINK_FILE} is not in {uri}"
        ) from None
    named = {(k if k.startswith("test_") else f"test_{k}"): v for k, v in metrics.items()}
    found, _ = _metrics(named, 0)
    report = Path(report_dir)
    client.log_batch(run_id, metrics=found, tags=_tags({"cxr.test_report": str(report.resolve())}))
    log_artifacts(uri, run_id, [report], artifact_path="evaluation")
    return run_id


def _resolve(uri: str | None) -> str:
    return tracking_uri(uri)


def view_hint(uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to look at the runs of ``uri``: the ``mlflow ui`` command for a database, the
    run's page for a tracking server."""
    if uri.startswith(("http://", "https://")):
        page = uri.rstrip("/")
        if experiment_id and run_id:
            page += f"/#/experiments/{experiment_id}/runs/{run_id}"
        return f"open {page}"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


# provenance -----------------------------------------------------------------------------------
@functools.cache
def git_commit() -> str | None:
    """The commit of the cxr source tree when cxr runs from a git checkout, else None (never
    raises; a short timeout)."""
    here = Path(__file__).resolve().parents[1]  # the cxr package folder
    try:
        tracked = subprocess.run(
            ["git", "-C", str(here), "ls-files", "--error-unmatch", "__init__.py"],
            capture_output=True,
            timeout=5,
            check=False,
        )
        if tracked.returncode != 0:  # not a checkout, or cxr is not part of this one
            return None
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit if head.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def cache_fingerprint(cache: str | Path) -> str | None:
    """sha256 (hex) of a prepared cache's ``manifest.json``, or None when it has none."""
    try:
        return hashlib.sha256((Path(cache) / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return None


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
        tracking_uri: the store; default: see :func:`tracking_uri` (a resumed run: the one
            its ``mlflow.json`` names).
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
