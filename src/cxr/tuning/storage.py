"""Where a study lives, and what it records about itself.

- :func:`open_storage`: Optuna's journal file (default ``OUT/study.journal``: a file lock,
  no database server; processes on one machine, or on machines sharing the folder, can
  work on it at once) or a database (``postgresql://user@host/db``, ``sqlite:///study.db``)
  with Optuna's heartbeat, so that trials of workers on other machines that died are found.
- :func:`open_study`: the study, created when missing (exactly one worker creates it).
- :func:`check_base`: the base config is recorded in a new study (and in
  ``OUT/base_config.yaml``); running the study with other settings is refused, naming the
  fields that differ, unless forced.
- :func:`claim_folder`: ``OUT/study.json`` ties an output folder to one study.
"""

from __future__ import annotations

import importlib.util
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from cxr.errors import CxrError
from cxr.training.config import TrainConfig
from cxr.tuning.outputs import write_atomic

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "TuneError",
    "check_base",
    "claim_folder",
    "open_storage",
    "open_study",
]

#: Database storages: a worker's heartbeat every HEARTBEAT_S seconds; a trial without one
#: for GRACE_S seconds is failed (and its values enqueued again).
HEARTBEAT_S, GRACE_S = 30, 180
_RDB_SCHEMES = ("postgresql", "postgres", "sqlite", "mysql", "mariadb", "oracle", "mssql")


class TuneError(CxrError, ValueError):
    """The study cannot start or continue; the message says why and what to do."""


def _hide_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if sep and at and ":" in auth:
        return f"{head}://{auth.split(':', 1)[0]}:***@{host}"
    return url


def _retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: the values of a trial failed for a silent worker are tried again."""
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _with_driver(url: str) -> str:
    """``url`` with an installed PostgreSQL driver named: SQLAlchemy 2.1 picks psycopg (3)
    for a bare ``postgresql://``, while the tune extra brings psycopg2."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def _database(url: str) -> RDBStorage:
    shown = _hide_password(url)
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in _RDB_SCHEMES:
        raise TuneError(
            f"storage {shown}: not a database URL (postgresql://user@host/db, "
            "sqlite:///study.db) nor a journal file path"
        )
    url = _with_driver(url)
    for attempt in range(3):
        try:
            return _connect(url)
        except ImportError as err:
            missing = getattr(err.__cause__, "name", None) or err.name or "module"
            raise TuneError(
                f"storage {shown}: the database driver is not installed (no {missing}; "
                "pip install 'cxr[tune]' brings psycopg2 for PostgreSQL)"
            ) from None
        except Exception as err:  # noqa: BLE001 (SQLAlchemy's many kinds of error)
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if isinstance(err, (IntegrityError, ProgrammingError)) and attempt < 2:
                time.sleep(0.5 + attempt)  # workers creating the tables at once: try again
                continue
            cause = getattr(err, "orig", None) or err
            first = (str(cause).strip().splitlines() or [type(err).__name__])[0]
            raise TuneError(f"storage {shown}: cannot open the database ({first})") from None
    raise AssertionError("unreachable")


def _connect(url: str) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=_retry_stale,
        )


def open_storage(
    storage: str | Path | BaseStorage | None, out_dir: Path
) -> tuple[BaseStorage, str]:
    """The study's storage and a description of it (passwords hidden).

    Args:
        storage: None (the journal file ``out_dir/study.journal``), a database URL
            (``postgresql://...``, ``sqlite:///...``), a journal file path, or an Optuna
            storage object.
    """
    if isinstance(storage, BaseStorage):
        return storage, type(storage).__name__
    text = str(storage).strip() if storage is not None else ""
    if "://" in text:
        return _database(text), _hide_password(text)
    path = Path(text) if text else out_dir / "study.journal"
    if path.is_dir():
        raise TuneError(f"storage {path} is a folder; give a file such as {path}/study.journal")
    if not path.parent.is_dir():
        raise TuneError(f"storage {path}: no folder {path.parent}")
    return JournalStorage(JournalFileBackend(str(path))), str(path.resolve())


def open_study(
    storage: BaseStorage, name: str, where: str, pruner: optuna.pruners.BasePruner
) -> tuple[optuna.Study, bool]:
    """The study (created when missing) and whether this call created it."""
    sampler = optuna.samplers.TPESampler()
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner
        )
        return study, True
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.directions != [StudyDirection.MAXIMIZE]:
        raise TuneError(
            f"study {name!r} in {where} does not maximise one value; choose another --study"
        )
    return study, False


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_base(
    study: optuna.Study,
    base: TrainConfig,
    name: str,
    out_dir: Path,
    force: bool,
    echo: Callable[[str], None],
) -> None:
    """Record ``base`` in a new study; refuse another base config unless ``force``."""
    now = base.to_dict()
    saved = study.user_attrs.get("base_config")
    if isinstance(saved, dict):
        old, new = _flat(saved), _flat(now)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if not diff:
            return
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        if not force:
            raise TuneError(
                f"study {name!r} was started with another base config ({shown}); rerun with its "
                f"settings (--config {out_dir / 'base_config.yaml'}) or add --force-config to "
                "continue with these"
            )
        echo(f"note: the base config changed ({shown}); later trials use the new one")
    study.set_user_attr("base_config", now)
    base.save(out_dir / "base_config.yaml")


def claim_folder(out_dir: Path, name: str, where: str) -> None:
    """Tie ``out_dir`` to its study (``study.json``); another study's folder is refused."""
    path = out_dir / "study.json"
    mine = {"study": name, "storage": where}
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError):
            theirs = None
        if isinstance(theirs, dict) and theirs != mine:
            raise TuneError(
                f"{path}: {out_dir} holds the outputs of study {theirs.get('study')!r} in "
                f"{theirs.get('storage')}; choose another --out"
            )
    write_atomic(path, json.dumps(mine, indent=2) + "\n")
