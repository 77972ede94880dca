"""Workers of a study: who runs a trial, and what happens to the trials of a stopped one.

Every trial records its worker (user attribute ``worker``: host name, process id and the
process's start time) as soon as it is asked for. A worker that starts, and again before
each trial it asks for, looks at the study's RUNNING trials: one of this host whose process
is gone (or a reused process id, or this very process when it no longer runs it) was left
by a stopped worker. It is marked FAIL with ``fail_reason`` "interrupted" (not counted
toward the study's trials) and its values are enqueued, so that the retry tries the same
values. Several workers may find the same trial: the first to mark it wins, the others
leave it alone.

Trials of other machines are left to Optuna's heartbeat, which database storages keep
(:func:`heartbeat` records it while a trial runs; Optuna fails trials without one, and
:func:`cxr.tuning.storage.open_storage` enqueues their values again). Optuna's journal
storage has no heartbeat: share a journal file between machines only when a stopped
machine's trials may stay RUNNING until it is back (its next run marks them).
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cxr.tuning.records import INTERRUPTED

__all__ = ["CLAIM_GRACE_S", "heartbeat", "recover_stale", "running_here", "worker"]

#: A RUNNING trial whose worker never recorded itself is stale after this many seconds.
CLAIM_GRACE_S = 60
_HOST = socket.gethostname()
#: Trials this process is running now: (study name, trial number).
_RUNNING_HERE: set[tuple[str, int]] = set()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux /proc; None elsewhere or when gone); "Z" for a
    zombie (killed, not yet reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    if fields and fields[0] == "Z":
        return "Z"
    return fields[19] if len(fields) > 19 else None


def worker() -> dict[str, Any]:
    """This process, as a trial records it: host, pid and start time."""
    return {"host": _HOST, "pid": os.getpid(), "started": _process_start(os.getpid())}


def _alive(who: dict[str, Any]) -> bool:
    """Whether the process a ``worker`` record of this host names still runs."""
    pid = who.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    started = _process_start(pid)
    if started == "Z":
        return False
    return started is None or who.get("started") in (None, started)  # else: a reused pid


@contextmanager
def running_here(study_name: str, number: int) -> Iterator[None]:
    """Mark trial ``number`` as run by this process while the block runs."""
    _RUNNING_HERE.add((study_name, number))
    try:
        yield
    finally:
        _RUNNING_HERE.discard((study_name, number))


def _stale(trial: FrozenTrial, study_name: str) -> bool:
    who = trial.user_attrs.get("worker")
    if not isinstance(who, dict):  # asked for, then stopped before recording its worker
        start = trial.datetime_start
        return start is not None and (datetime.now() - start).total_seconds() > CLAIM_GRACE_S
    if who.get("host") != _HOST:
        return False  # another machine: Optuna's heartbeat (database storages)
    if who.get("pid") == os.getpid():
        return (study_name, trial.number) not in _RUNNING_HERE
    return not _alive(who)


def recover_stale(
    study: optuna.Study, storage: BaseStorage, study_name: str, echo: Callable[[str], None]
) -> list[int]:
    """Mark the trials of stopped workers interrupted and enqueue their values again;
    returns their numbers."""
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _stale(t, study_name):
            continue
        try:  # the first worker to get here wins; the others find the trial finished
            storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, KeyError):
            continue
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        found.append(t.number)
        echo(f"trial {t.number} was left running by a stopped worker: interrupted, tried again")
    if isinstance(storage, RDBStorage) and storage.heartbeat_interval:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return found


@contextmanager
def heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs (database storages only)."""
    if not isinstance(storage, RDBStorage) or not storage.heartbeat_interval:
        yield
        return
    rdb, interval = storage, storage.heartbeat_interval
    stop = threading.Event()

    def beat() -> None:
        while True:
            with suppress(Exception):  # a missed beat only; the next one may pass
                rdb.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"cxr-tune-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
