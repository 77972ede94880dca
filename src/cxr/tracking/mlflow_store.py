"""MLflow stores and runs for cxr: where runs are logged, run folders' links to their MLflow
runs, runs started and ended by id, artifacts, evaluations, and the tags cxr records (version,
git commit, cache fingerprints). The training callback is in :mod:`cxr.tracking.mlflow`.

MLflow is imported on first use (it is slow to import); everything goes through
:class:`mlflow.tracking.MlflowClient` with explicit run ids.
"""

from __future__ import annotations

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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr import __version__
from cxr.errors import CxrError

if TYPE_CHECKING:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

#: The file in a run folder that names its MLflow run.
LINK_FILE = "mlflow.json"
#: Characters of an error message kept in the ``cxr.error`` tag.
ERROR_TAG_CHARS = 500
_INSTALL = "MLflow tracking needs the tune extra: pip install 'cxr[tune]'"
#: Files of a run folder logged as artifacts when the run ends (the model besides).
_RUN_FILES = ("config.yaml", "run.json", "history.csv")


class MLflowNotInstalled(CxrError, ImportError):
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
