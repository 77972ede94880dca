"""The files ``cxr tune`` keeps in its output folder, rewritten after every finished trial
(each written whole, then renamed into place, so that several workers and a kill never
leave half a file)::

    trials.csv                 one row per trial: number, state, value, seconds,
                               fail_reason, retry_of, epochs, run_dir, (with --folds:
                               fold_aucs, fold_auc_sd), then the parameters
    best_config.yaml           the best trial's full TrainConfig (cxr train --config)
    best_trial.json            the best trial: number, value, parameters, run folder
    optimisation_history.png   value per trial and best so far
    param_importances.png      PED-ANOVA importances of the parameters
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from cxr.training.config import TrainConfig
from cxr.tuning.records import best_of, epochs, seconds, trials_csv

__all__ = [
    "BEST_CONFIG",
    "BEST_TRIAL",
    "HISTORY_PNG",
    "IMPORTANCES_PNG",
    "TRIALS_CSV",
    "write_atomic",
    "write_outputs",
]

TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_TRIAL = "best_trial.json"
HISTORY_PNG = "optimisation_history.png"
IMPORTANCES_PNG = "param_importances.png"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole, then rename it into place (no reader sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def _best_json(best: FrozenTrial, study_name: str) -> str:
    record = {
        "study": study_name,
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "run_dir": best.user_attrs.get("run_dir"),
        "host": (best.user_attrs.get("worker") or {}).get("host"),
        "epochs": epochs(best),
        "seconds": seconds(best),
    }
    if best.user_attrs.get("cv_folds"):  # value: the mean held-out macro AUC of the folds
        for key in ("cv_folds", "fold_aucs", "fold_auc_sd"):
            record[key] = best.user_attrs.get(key)
    return json.dumps(record, indent=2)


def write_outputs(
    trials: Sequence[FrozenTrial], study: Any, out_dir: Path, study_name: str
) -> list[Path]:
    """Rewrite the files of ``out_dir`` (see above); returns their paths.

    Args:
        trials: the study's trials.
        study: the :class:`optuna.Study` (for the parameter importances).
    """
    from cxr.tuning.figures import history_png, importances_png  # matplotlib: when drawn

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / TRIALS_CSV, trials_csv(trials))
    written = [out_dir / TRIALS_CSV]
    best = best_of(trials)
    if best is not None and isinstance(best.user_attrs.get("config"), dict):
        config = TrainConfig.from_dict(best.user_attrs["config"])
        tmp = out_dir / f".{BEST_CONFIG}.{os.getpid()}.tmp"
        config.save(tmp)
        os.replace(tmp, out_dir / BEST_CONFIG)
        write_atomic(out_dir / BEST_TRIAL, _best_json(best, study_name) + "\n")
        written += [out_dir / BEST_CONFIG, out_dir / BEST_TRIAL]
    write_atomic(out_dir / HISTORY_PNG, history_png(trials))
    write_atomic(out_dir / IMPORTANCES_PNG, importances_png(study))
    return written + [out_dir / HISTORY_PNG, out_dir / IMPORTANCES_PNG]
