"""The probe recipe of ``cxr train --recipe probe``: a linear head fitted on frozen features.

For a few hundred labelled images a pretrained backbone's features, left as they are,
often beat fine-tuning it. The recipe:

1. build the model (``config.backbone`` with its ``pretrained`` weights; an average-pooled
   head without hidden layers or dropout) and extract the pooled features of every
   training image and of its mirror image, averaged, and of every validation image
   (:func:`~cxr.training.probe_features.pooled_features`): one pass, no training;
2. choose each label's L2 penalty by K-fold cross-validation over patient-level folds of
   the training set (:func:`cxr.split.patient_folds`, K = 5 or ``config.folds``, fewer
   when there are fewer patients) and fit one logistic regression per label
   (:func:`~cxr.training.probe_fit.fit_probe`); with ``config.folds`` K >= 2 the K fold
   models become the K members of one model, their probabilities averaged;
3. write the weights into the head's output layer: an ordinary cxr model file, so
   predict, Grad-CAM, calibration, the gate, ONNX export and the service work unchanged;
4. choose the thresholds and fit the calibration on the training set's out-of-fold
   probabilities (of the original view: what the model will see) together with the
   validation probabilities, far more positives than the validation set alone; fit the
   not-a-chest-X-ray gate on the features already extracted.

The run folder holds what a fine-tune run's does (``config.yaml``, ``run.json``,
``history.csv`` with one row, ``best.safetensors`` and ``last.safetensors``, the same
model), without ``state.pt``: there is nothing to resume. In the history row
``train_loss`` is the out-of-fold log-loss of the training set, ``val_loss`` the
validation log-loss (unweighted binary cross-entropy, known labels only), ``cv_macro_auc``
/ ``cv_auc_<label>`` the training set's out-of-fold AUCs, and ``images_per_second`` the
images (views counted) through the backbone per second of extraction.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr import __version__
from cxr.devices import resolve_device
from cxr.models import ChestClassifier, HeadConfig, ModelSpec, build_model
from cxr.prepared_cache import PreparedCache
from cxr.preprocessing import Preprocessing
from cxr.table import LabelTable
from cxr.training.callbacks import RunStart, TrainingCallback
from cxr.training.config import TrainConfig, TrainError
from cxr.training.probe_features import VIEWS, pooled_features
from cxr.training.probe_fit import ProbeFit, fit_probe, log_loss
from cxr.training.records import write_history
from cxr.training.results import TrainResult
from cxr.training.startup import Callback, default_callbacks, label_index, open_cache

__all__ = ["CV_FOLDS", "cv_folds", "train_probe"]

#: Cross-validation folds when ``config.folds`` is 1 (fewer when there are fewer patients).
CV_FOLDS = 5


def cv_folds(config: TrainConfig, table: LabelTable, where: Path | str = "") -> np.ndarray:
    """The patient-level fold (0..K-1) of every training image: K = ``config.folds`` when
    it is 2 or more, else :data:`CV_FOLDS` or the number of patients when smaller; seeded
    by ``config.seed``. TrainError when the training set has too few patients."""
    from cxr.split import patient_folds
    from cxr.split.common import patient_keys

    patients = len(np.unique(patient_keys(table).astype(str))) if len(table) else 0
    k = int(config.folds) if config.folds >= 2 else min(CV_FOLDS, patients)
    if k < 2:
        raise TrainError(
            f"the training cache {where} holds {patients} patient(s); choosing the probe's "
            "penalty by cross-validation needs at least 2"
        )
    try:
        folds = patient_folds(table, k, seed=config.seed)
    except ValueError as err:
        raise TrainError(f"the training cache {where}: {err} (--folds)") from None
    if len(np.unique(folds)) != k:
        raise TrainError(
            f"the training cache {where} could not be cut into {k} non-empty patient folds; "
            "use fewer --folds"
        )
    return folds


def train_probe(
    config: TrainConfig,
    train_cache: str | Path | PreparedCache,
    val_cache: str | Path | PreparedCache,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fit the probe (module docstring) and write the run folder; the arguments are those
    of :func:`cxr.training.train`, which calls this for ``config.recipe == "probe"``."""
    if config.recipe != "probe":
        raise TrainError(f"recipe={config.recipe!r}: train_probe runs the probe recipe only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError(
            "the probe recipe runs in one process (one pass over the images, no training "
            "steps to share); run `cxr train --recipe probe` without torchrun"
        )
    run_dir = Path(run_dir)
    done = [n for n in ("state.pt", "best.safetensors") if (run_dir / n).exists()]
    if done and not overwrite:
        raise TrainError(
            f"{run_dir} already holds a run ({done[0]}); choose another --out, or add "
            "--overwrite to replace it"
        )
    train_c, val_c = open_cache(train_cache), open_cache(val_cache)
    names, train_index, val_index = label_index(config, train_c, val_c)
    folds = cv_folds(config, train_c.table, train_c.path)
    device = resolve_device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("state.pt", "history.csv", "best.safetensors", "last.safetensors"):
        (run_dir / stale).unlink(missing_ok=True)
    config.save(run_dir / "config.yaml")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "train_cache": str(train_c.path.resolve()),
                "val_cache": str(val_c.path.resolve()),
                "cxr_version": __version__,
                "world_size": 1,
                "recipe": "probe",
            },
            indent=2,
        )
    )
    k = int(folds.max()) + 1
    echo(
        f"recipe probe: {config.backbone} ({config.pretrained}) on {_where(device)}: features "
        f"of {len(train_c)} training images x {len(VIEWS)} views ({', '.join(VIEWS)}; "
        f"averaged) and {len(val_c)} validation images at {train_c.size} px ({train_c.fit}), "
        f"one logistic regression per label for {len(names)} labels ({', '.join(names)}), "
        f"C chosen by {k}-fold patient CV on the training set"
        + (f", {k} cross-fitted members" if config.folds >= 2 else "")
        + f"; into {run_dir}"
    )
    observers = default_callbacks(callbacks)
    try:
        return _observed(
            config, train_c, val_c, names, train_index, val_index, folds, device, run_dir,
            progress, echo, observers,
        )  # fmt: skip
    except BaseException as err:
        for cb in observers:
            cb.on_error(err)
        raise


def _where(device: torch.device) -> str:
    return f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def probe_model(
    config: TrainConfig, names: Sequence[str], preprocessing: Preprocessing, members: int
) -> ChestClassifier:
    """The classifier whose head will hold the probe: ``config``'s backbone with its
    pretrained weights, an average-pooled head with one output layer (of ``members`` x L
    outputs when ``members`` > 1)."""
    head: dict[str, Any] = {"pool": "avg", "dropout": 0.0, "hidden": ()}
    if members > 1:
        if "members" not in {f.name for f in fields(HeadConfig)}:
            raise TrainError("this cxr's model head cannot hold ensemble members; use --folds 1")
        head["members"] = members
    spec = ModelSpec(
        labels=tuple(names),
        backbone=config.backbone,
        head=HeadConfig(**head),
        preprocessing=preprocessing,
    )
    torch.manual_seed(config.seed)
    return build_model(spec, pretrained=config.pretrained).eval()


def set_head(model: ChestClassifier, fit: ProbeFit) -> None:
    """Copy the probe's weights (raw-feature units) into the head's output layer."""
    out = model.head.out
    want = (fit.coef.shape[0], fit.coef.shape[1])
    if tuple(out.weight.shape) != want:
        raise TrainError(
            f"the model's output layer is {tuple(out.weight.shape)}, the probe's weights "
            f"{want}; the head does not fit the probe"
        )
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(fit.coef).to(out.weight))
        out.bias.copy_(torch.from_numpy(fit.intercept).to(out.bias))


def head_probabilities(model: ChestClassifier, pooled: np.ndarray) -> np.ndarray:
    """float64 (N, L): the model's probabilities for pooled features (N, C), through its
    own head (average pooling of a 1x1 map is the identity)."""
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))[:, :, None, None]
    with torch.inference_mode():
        logits = model.head(x.to(next(model.parameters()).device))
    return torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)


def _mean_loss(y: np.ndarray, p: np.ndarray) -> float:
    known = ~np.isnan(y) & ~np.isnan(p)
    return float(log_loss(y[known], p[known]).mean()) if known.any() else math.nan


def _observed(
    config, train_c, val_c, names, train_index, val_index, folds, device, run_dir, progress,
    echo, callbacks: list[TrainingCallback],
) -> TrainResult:  # fmt: skip
    """The run from its start event to its end event (the caller reports errors)."""
    for cb in callbacks:
        cb.on_start(
            RunStart(
                run_dir, config, tuple(names), len(train_c), len(val_c), str(device), 0,
                True, train_c.path, val_c.path,
            )
        )  # fmt: skip
    k = int(folds.max()) + 1
    members = k if config.folds >= 2 else 1
    start = time.perf_counter()
    model = probe_model(config, names, Preprocessing(size=train_c.size, fit=train_c.fit), members)
    batch = config.val_batch_size
    train_views = pooled_features(
        model, train_c, views=VIEWS, batch_size=batch, device=device, progress=progress
    )
    val_pooled = pooled_features(
        model, val_c, views=("original",), batch_size=batch, device=device, progress=progress
    )[0]
    extract_seconds = time.perf_counter() - start
    train_y = train_c.table.labels[:, train_index].astype(np.float64)
    val_y = val_c.table.labels[:, val_index].astype(np.float64)
    fit = fit_probe(
        train_views.mean(axis=0), train_y, folds, members=members, oof_features=train_views[0]
    )
    set_head(model, fit)
    val_probs = head_probabilities(model, val_pooled)
    seconds = time.perf_counter() - start
    seen = train_views.shape[0] * train_views.shape[1] + len(val_pooled)
    rate = seen / max(extract_seconds, 1e-9)
    row = _history_row(fit, names, train_y, val_y, val_probs, rate, seconds)
    echo(f"C per label: {fit.describe_C(names)}")
    echo(
        f"probe: cross-validated macro AUC {row['cv_macro_auc']:.4f} (training set, out of "
        f"fold), validation macro AUC {row['val_macro_auc']:.4f}, val loss "
        f"{row['val_loss']:.4f}, {seconds:.1f} s"
    )
    _save(config, model, fit, names, train_y, val_y, val_probs, row, run_dir, train_c, val_c, echo)
    _gate(run_dir, train_views[0], val_pooled, echo)
    shutil.copyfile(run_dir / "best.safetensors", run_dir / "last.safetensors")
    history = [row]
    write_history(run_dir / "history.csv", history)
    for cb in callbacks:
        cb.on_epoch(row)
    result = TrainResult(run_dir, float(row["val_macro_auc"]), 0, 1, history)
    for cb in callbacks:
        cb.on_end(result)
    return result


def _history_row(
    fit: ProbeFit,
    names: Sequence[str],
    train_y: np.ndarray,
    val_y: np.ndarray,
    val_probs: np.ndarray,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    from cxr.evaluation.metrics import roc_auc

    aucs = {}
    for j, name in enumerate(names):
        known = ~np.isnan(val_y[:, j])
        y = val_y[known, j]
        aucs[name] = roc_auc(y, val_probs[known, j]) if 0 < y.sum() < len(y) else math.nan
    valid = [a for a in aucs.values() if not math.isnan(a)]
    row: dict[str, Any] = {
        "epoch": 1,
        "phase": 0,
        "train_loss": _mean_loss(train_y, fit.oof),
        "val_loss": _mean_loss(val_y, val_probs),
        "val_macro_auc": float(np.mean(valid)) if valid else math.nan,
        "images_per_second": rate,
        "seconds": seconds,
    }
    row.update({f"val_auc_{n}": a for n, a in aucs.items()})
    row["images_per_second_steady"] = rate
    row["warmup_seconds"] = 0.0
    row["cv_macro_auc"] = fit.cv_macro_auc
    row.update({f"cv_auc_{n}": float(a) for n, a in zip(names, fit.cv_auc, strict=True)})
    row["note"] = f"probe: C by {fit.folds}-fold CV" + (
        f", {fit.members} members" if fit.members > 1 else ""
    )
    return row


def _save(
    config: TrainConfig,
    model: ChestClassifier,
    fit: ProbeFit,
    names: Sequence[str],
    train_y: np.ndarray,
    val_y: np.ndarray,
    val_probs: np.ndarray,
    row: dict[str, Any],
    run_dir: Path,
    train_c: PreparedCache,
    val_c: PreparedCache,
    echo: Callable[[str], None],
) -> None:
    """Write ``best.safetensors`` with thresholds and calibration fitted on the training
    set's out-of-fold probabilities together with the validation probabilities."""
    from cxr.evaluation.thresholds import choose_thresholds
    from cxr.modelfile import save_model

    labels = np.concatenate([train_y, val_y])
    probs = np.concatenate([fit.oof, val_probs])
    source = f"{train_c.path.resolve()} ({fit.folds}-fold out-of-fold) and {val_c.path.resolve()}"
    thresholds = dict(choose_thresholds(labels, probs, names, source=source))
    calibration = None
    if config.calibration != "none":
        from cxr.calibration import fit_calibration

        try:
            calibration = fit_calibration(
                labels, probs, names, method=config.calibration, source=source
            )
        except ValueError as err:
            echo(f"no calibration: {err}")
    summary = {
        "epoch": 1,
        "val_macro_auc": row["val_macro_auc"],
        "val_auc": {k[len("val_auc_") :]: v for k, v in row.items() if k.startswith("val_auc_")},
        "config": config.to_dict(),
        "recipe": "probe",
        "probe": {
            "folds": fit.folds,
            "members": fit.members,
            "C": {n: float(c) for n, c in zip(names, fit.C, strict=True)},
            "shared_C": fit.shared_C,
            "shared": [n for n, s in zip(names, fit.shared, strict=True) if s],
            "cv_macro_auc": fit.cv_macro_auc,
            "cv_auc": {n: float(a) for n, a in zip(names, fit.cv_auc, strict=True)},
        },
    }
    save_model(run_dir / "best.safetensors", model.cpu(), thresholds, summary, calibration)
    echo(
        f"best model: {run_dir / 'best.safetensors'} (the probe; thresholds chosen and "
        "probabilities calibrated on the training set's out-of-fold and the validation "
        "predictions)"
    )


def _gate(run_dir: Path, train: np.ndarray, val: np.ndarray, echo: Callable[[str], None]) -> None:
    """Fit the not-a-chest-X-ray gate on the original view's pooled features (the images
    as the model will see them; at most :data:`cxr.ood.MAX_TRAIN_IMAGES` training images,
    the sample :func:`cxr.ood.fit_model_gate` draws) and store it in the best model."""
    from cxr.modelfile import with_ood
    from cxr.ood import MAX_TRAIN_IMAGES, fit_ood_gate

    rows = np.arange(len(train))
    if len(rows) > MAX_TRAIN_IMAGES:
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_TRAIN_IMAGES, replace=False))
    try:
        gate = fit_ood_gate(train[rows], val)
    except ValueError as err:
        echo(f"no not-a-chest-X-ray check: {err}")
        return
    with_ood(run_dir / "best.safetensors", gate)
    echo(f"not-a-chest-X-ray check stored in the best model: {gate.describe()}")
