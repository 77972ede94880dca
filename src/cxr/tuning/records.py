"""What a study's trials amount to: their kinds, counts, one-line summaries and the rows
of ``trials.csv`` (the files of the output folder: :mod:`cxr.tuning.outputs`).

Kinds of trial (:func:`kind`), from Optuna's states and the user attributes cxr sets:

- ``complete``, ``pruned``: finished; counted toward the study's number of trials;
- ``failed``: training raised (user attribute ``fail_reason``); counted;
- ``interrupted``: left RUNNING by a worker that was stopped (killed, Ctrl-C, a machine
  gone) and marked FAIL with ``fail_reason`` "interrupted" by a later worker (or FAIL with
  no reason: failed by Optuna's heartbeat check); not counted, its values are tried again;
- ``surplus``: asked for by a worker that lost the race for the study's last slot (user
  attribute ``surplus``); not counted, not shown;
- ``running`` (counted: a live worker trains it), ``waiting`` (enqueued, not started).

A cross-validated trial (user attribute ``cv_folds``, :mod:`cxr.tuning.crossval`) reports
once per fold: its lines say folds where a plain trial's say epochs, and ``trials.csv``
gets the columns ``fold_aucs`` (the held-out macro AUC of each fold done, ``;``-separated)
and ``fold_auc_sd`` (their standard deviation) when any trial has them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "INTERRUPTED",
    "Counts",
    "best_of",
    "count",
    "epochs",
    "fold_detail",
    "kind",
    "seconds",
    "trial_line",
    "trials_csv",
]

#: The fail_reason of a trial whose worker was stopped.
INTERRUPTED = "interrupted"


def kind(trial: FrozenTrial) -> str:
    """complete, pruned, failed, interrupted, surplus, running or waiting (see above)."""
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.user_attrs.get("surplus"):
        return "surplus"
    if trial.user_attrs.get("fail_reason", INTERRUPTED) == INTERRUPTED:
        return "interrupted"
    return "failed"


@dataclass
class Counts:
    """Trials by kind."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: int = 0
    surplus: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that ended and count: complete, pruned and failed."""
        return self.complete + self.pruned + self.failed

    @property
    def counted(self) -> int:
        """Trials toward the study's number: finished ones and those running now."""
        return self.finished + self.running

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in vars(self).items()}

    def describe(self) -> str:
        parts = [f"{v} {k}" for k, v in vars(self).items() if v and k != "surplus"]
        return ", ".join(parts) or "no trials"


def count(trials: Iterable[FrozenTrial], below: int | None = None) -> Counts:
    """Trials by kind; with ``below``, only those numbered lower."""
    out = Counts()
    for t in trials:
        if below is None or t.number < below:
            name = kind(t)
            setattr(out, name, getattr(out, name) + 1)
    return out


def best_of(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The complete trial of the highest value (the lowest number among equals)."""
    done = [t for t in trials if kind(t) == "complete" and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def seconds(trial: FrozenTrial) -> float | None:
    """How long the trial ran: its ``seconds`` attribute, else its start and end times."""
    got = trial.user_attrs.get("seconds")
    if isinstance(got, (int, float)):
        return float(got)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def epochs(trial: FrozenTrial) -> int:
    """Epochs the trial trained: its ``epochs`` attribute (all folds of a cross-validated
    trial), else the number of reported values (one per epoch)."""
    got = trial.user_attrs.get("epochs")
    return int(got) if isinstance(got, int) else len(trial.intermediate_values)


def fold_detail(trial: FrozenTrial) -> str:
    """A cross-validated trial's fold AUCs and their spread, e.g. ``mean of 3 folds: 0.812,
    0.795, 0.830; sd 0.018`` ("" for a plain trial)."""
    aucs = trial.user_attrs.get("fold_aucs")
    if not trial.user_attrs.get("cv_folds") or not isinstance(aucs, list) or not aucs:
        return ""
    sd = trial.user_attrs.get("fold_auc_sd")
    text = f"mean of {len(aucs)} folds: " + ", ".join(f"{a:.3f}" for a in aucs)
    return text + (f"; sd {sd:.3f}" if isinstance(sd, (int, float)) else "")


def trial_line(trial: FrozenTrial, best: FrozenTrial | None = None) -> str:
    """One line about a finished trial: number, how it ended, value, time, parameters."""
    what = kind(trial)
    steps = len(trial.intermediate_values)
    folds = trial.user_attrs.get("cv_folds")
    if what == "complete":
        status = f"complete: {trial.value:.4f}"
        status += f" ({fold_detail(trial)})" if fold_detail(trial) else ""
    elif what == "pruned":
        last = trial.intermediate_values.get(max(trial.intermediate_values, default=0))
        after = f"fold {steps} of {folds}" if folds else f"epoch {steps}"
        mean = "mean " if folds else ""
        status = f"pruned after {after}" + (f" ({mean}{last:.4f})" if last is not None else "")
    else:
        status = f"{what}: {trial.user_attrs.get('fail_reason', INTERRUPTED)}"
    took = seconds(trial)
    line = f"trial {trial.number} {status}"
    line += f" in {took:.1f} s" if took is not None else ""
    line += " (" + ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items()) + ")"
    if best is not None:
        line += f"; best {best.value:.4f} (trial {best.number})"
    return line


def trials_csv(trials: Sequence[FrozenTrial]) -> str:
    """The rows of ``trials.csv`` (surplus trials left out)."""
    shown = [t for t in trials if kind(t) != "surplus"]
    names: list[str] = []
    for t in shown:
        names += [k for k in t.params if k not in names]
    cv = any(t.user_attrs.get("cv_folds") for t in shown)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fixed = ["number", "state", "value", "seconds", "fail_reason", "retry_of", "epochs", "run_dir"]
    w.writerow(fixed + (["fold_aucs", "fold_auc_sd"] if cv else []) + names)
    for t in sorted(shown, key=lambda t: t.number):
        took = seconds(t)
        row = [
            t.number,
            t.state.name,
            "" if t.value is None else repr(float(t.value)),
            "" if took is None else f"{took:.3f}",
            t.user_attrs.get("fail_reason", INTERRUPTED if kind(t) == "interrupted" else ""),
            t.user_attrs.get("retry_of", ""),
            epochs(t),
            t.user_attrs.get("run_dir", ""),
        ]
        if cv:
            aucs, sd = t.user_attrs.get("fold_aucs") or [], t.user_attrs.get("fold_auc_sd")
            row += [";".join(repr(float(a)) for a in aucs), "" if sd is None else repr(float(sd))]
        w.writerow(row + [t.params.get(n, "") for n in names])
    return buf.getvalue()
