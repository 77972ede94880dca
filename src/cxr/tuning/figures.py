"""Figures of a study as PNG bytes: the optimisation history and the parameter importances.

Drawn with matplotlib's object API on the Agg canvas, as :mod:`cxr.evaluation.plots` does
(no pyplot, no display needed). Importances come from Optuna's PED-ANOVA evaluator (no
scikit-learn); with too few completed trials the figure says so instead of showing bars.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial

from cxr.tuning.records import kind

__all__ = ["MIN_IMPORTANCE_TRIALS", "history_png", "importances_png"]

DPI = 110
#: Completed trials needed before importances mean anything.
MIN_IMPORTANCE_TRIALS = 4
_METRIC = "validation macro AUC"


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def history_png(trials: Sequence[FrozenTrial]) -> bytes:
    """Value per trial (complete: dots; pruned: crosses at their last reported value;
    failed: ticks under the axis) and the best value so far, by trial number."""
    fig, ax = _figure(6.8, 4.2)
    done = sorted((t for t in trials if kind(t) == "complete"), key=lambda t: t.number)
    pruned = [t for t in trials if kind(t) == "pruned" and t.intermediate_values]
    failed = [t for t in trials if kind(t) == "failed"]
    if not done and not pruned:
        _note(ax, f"no finished trial yet ({len(failed)} failed)")
        ax.set_title(f"Optimisation history: {_METRIC}")
        return _png(fig)
    if done:
        ax.plot(
            [t.number for t in done], [t.value for t in done], "o", color="C0", label="complete"
        )
        best, steps_x, steps_y = -math.inf, [], []
        for t in done:
            best = max(best, float(t.value or -math.inf))
            steps_x.append(t.number)
            steps_y.append(best)
        latest = max(t.number for t in trials)
        if latest > steps_x[-1]:  # the best so far holds to the latest trial
            steps_x.append(latest)
            steps_y.append(best)
        ax.step(steps_x, steps_y, where="post", color="C3", label="best so far")
    if pruned:
        ends = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.plot([t.number for t in pruned], ends, "x", color="0.5", label="pruned (last report)")
    if failed:
        ax.plot(
            [t.number for t in failed],
            [0.0] * len(failed),
            "|",
            color="C1",
            markersize=12,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="failed",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(_METRIC)
    ax.set_title(f"Optimisation history: {_METRIC}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances of the parameters (summing to 1), or ({}, why not)."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < MIN_IMPORTANCE_TRIALS:
        return (
            {},
            f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} completed "
            f"trials (have {n})",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        except (ValueError, RuntimeError) as err:
            return {}, f"no parameter importances: {' '.join(str(err).split())}"
    equal = [w for w in caught if "importances will be equal" in str(w.message).lower()]
    if equal or not found or not any(v > 0 for v in found.values()):
        return {}, f"no parameter importances yet: the {n} completed trials do not tell them apart"
    return dict(found), None


def importances_png(study: Any) -> bytes:
    """Horizontal bars of :func:`importances`, or a figure saying why there are none."""
    found, why = importances(study)
    fig, ax = _figure(6.8, max(2.6, 0.9 + 0.32 * len(found)))
    ax.set_title(f"Parameter importances for the {_METRIC} (PED-ANOVA)")
    if why is not None:
        _note(ax, why)
        return _png(fig)
    names = list(found)[::-1]  # most important on top
    ax.barh(names, [found[n] for n in names], color="C0")
    ax.set_xlabel("importance (sums to 1)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
