"""Evaluate a model file or a predictions file on a labelled source: the one pipeline behind
``cxr evaluate``, ``cxr demo`` and any other caller.

:func:`evaluate_model` runs a model on a source (a prepared cache of the model's size, or a
dataset whose images are decoded as in training) and scores it; :func:`evaluate_predictions`
scores a predictions CSV. Operating thresholds come from validation data only: the model
file's (chosen on validation during training), a JSON file of thresholds, or
:class:`ValidationPredictions` chosen on here — and validation images that are also test
images are refused. Both return an :class:`Evaluation` with ``to_text()`` and ``save()``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.errors import CxrError
from cxr.evaluation.alignment import align
from cxr.evaluation.predictions import Predictions, read_predictions, write_predictions
from cxr.evaluation.scoring import EvaluationReport, evaluate
from cxr.evaluation.thresholds import Thresholds, choose_thresholds
from cxr.table import LabelTable

if TYPE_CHECKING:
    from cxr.inference import Predictor

__all__ = [
    "Evaluation",
    "EvaluationError",
    "ValidationPredictions",
    "default_source",
    "evaluate_model",
    "evaluate_predictions",
    "is_cache",
    "load_labels",
    "predict_source",
]

_PathLike = str | os.PathLike[str]


class EvaluationError(CxrError, ValueError):
    """Evaluation inputs that do not fit together; the message says what to change."""


@dataclass(frozen=True)
class ValidationPredictions:
    """Validation predictions to choose operating thresholds on.

    Attributes:
        predictions: a predictions CSV of validation images.
        source: the dataset (or cache) with their labels; default: the CSV's folder.
        method: ``youden`` or ``sensitivity`` (:func:`~cxr.evaluation.choose_thresholds`).
        target_sensitivity: with ``method="sensitivity"``.
        format: dataset format of ``source`` (default: detected).
        image_column: the CSV's image column (default: detected).
    """

    predictions: Path
    source: Path | None = None
    method: str = "youden"
    target_sensitivity: float = 0.9
    format: str | None = None
    image_column: str | None = None


@dataclass
class Evaluation:
    """A finished evaluation: the report, the thresholds used and (when a model ran) its
    predictions."""

    report: EvaluationReport
    thresholds: Thresholds | None = None
    predictions: Predictions | None = None
    written: dict[str, Path] = field(default_factory=dict)

    def to_text(self) -> str:
        return self.report.to_text()

    def save(self, out_dir: _PathLike) -> dict[str, Path]:
        """Write the report files, ``predictions.csv`` (when a model ran) and
        ``thresholds.json`` (when thresholds were used) into ``out_dir``."""
        from cxr.evaluation.report import write_report

        out = Path(out_dir)
        written = write_report(self.report, out)
        if self.predictions is not None:
            written["predictions"] = Path(
                write_predictions(
                    out / "predictions.csv",
                    list(self.predictions.images),
                    self.predictions.probs,
                    self.predictions.pathologies,
                )
            )
        if self.thresholds is not None:
            written["thresholds"] = self.thresholds.save(out / "thresholds.json")
        self.written = written
        return written


# sources -----------------------------------------------------------------------------------
def is_cache(source: _PathLike, format: str | None = None) -> bool:
    """Whether ``source`` is a prepared cache folder (and no dataset format was forced)."""
    path = Path(source)
    return format is None and path.is_dir() and (path / "manifest.json").is_file()


def load_labels(source: _PathLike, format: str | None = None) -> LabelTable:
    """A dataset's label table, or a prepared cache's (folder with ``manifest.json``)."""
    if is_cache(source, format):
        from cxr.cache import PreparedCache

        return PreparedCache(Path(source)).table
    from cxr.datasets import load_dataset

    return load_dataset(source, format=format)


def default_source(predictions: _PathLike) -> Path:
    """The dataset beside a predictions CSV: its folder, when that holds a prepared cache or
    a dataset other than the predictions file itself."""
    from cxr.datasets import DatasetError, detect_format

    folder = Path(predictions).absolute().parent  # as the user named it (links kept)
    if (folder / "manifest.json").is_file():
        return folder
    hint = (
        f"pass the dataset with the true labels as SOURCE (no SOURCE given; {predictions}'s "
        f"folder {folder}"
    )
    try:
        fmt = detect_format(folder)
    except DatasetError as err:
        raise EvaluationError(f"{hint} holds no dataset: {err})") from None
    if fmt == "csv":
        raise EvaluationError(
            f"{hint} holds no NIH/CheXpert label file, only CSVs that may be predictions)"
        )
    return folder


def predict_source(
    predictor: Predictor,
    source: _PathLike,
    table: LabelTable,
    *,
    format: str | None = None,
    allow_missing: bool = False,
    progress: bool = False,
) -> Predictions:
    """Run ``predictor`` on every image of ``source`` (a cache, or the table's image files)."""
    notes: tuple[str, ...] = ()
    if is_cache(source, format):
        probs = predictor.predict_cache(source, progress=progress)
    else:
        probs, failed = predictor.predict_paths(table.paths, progress=progress)
        if failed:
            i, (reason, detail) = next(iter(failed.items()))
            notes = (
                f"{len(failed)} image(s) could not be read and have no predictions "
                f"(e.g. {table.paths[i]}: {reason}: {detail})",
            )
            if not allow_missing:
                raise EvaluationError(
                    f"{notes[0]}; fix or remove them, or pass --allow-missing "
                    "to evaluate the others"
                )
    return Predictions(
        images=np.asarray(table.paths),
        probs=probs,
        pathologies=predictor.labels,
        source=f"model {predictor.path}",
        notes=notes,
    )


def _validation_thresholds(
    validation: ValidationPredictions | Thresholds | _PathLike | None,
    test_images: set[str],
    labels: list[str] | None,
    allow_missing: bool,
    allow_duplicates: bool,
    test_predictions: Path | None,
) -> Thresholds | None:
    if validation is None or isinstance(validation, Thresholds):
        return validation
    if not isinstance(validation, ValidationPredictions):
        path = Path(validation)
        if path.suffix.lower() == ".json":
            return Thresholds.load(path)
        validation = ValidationPredictions(path)
    path = validation.predictions
    if test_predictions is not None and path.resolve() == test_predictions.resolve():
        raise EvaluationError(
            f"--thresholds-from {path} is the test predictions file; thresholds "
            "must be chosen on validation data, not on the test set"
        )
    val_source = validation.source or default_source(path)
    val = align(
        load_labels(val_source, validation.format),
        read_predictions(path, labels, validation.image_column),
        labels,
        allow_missing,
        allow_duplicates,
    )
    shared = test_images & set(val.report.images)
    if shared:
        raise EvaluationError(
            f"{len(shared)} image(s) are in both the validation data "
            f"({val_source}) and the test data (e.g. {min(shared)}); choose "
            "thresholds on separate images"
        )
    return choose_thresholds(
        val.labels,
        val.probs,
        val.report.pathologies,
        validation.method,
        validation.target_sensitivity,
        source=f"{path} (labels: {val_source})",
    )


def _score(
    table: LabelTable,
    preds: Predictions,
    source: _PathLike,
    predictions_name: str,
    validation: Any,
    fallback: Thresholds | None,
    options: dict[str, Any],
    test_predictions: Path | None,
) -> tuple[EvaluationReport, Thresholds | None]:
    labels = options.pop("labels", None)
    allow_missing = options.pop("allow_missing", False)
    allow_duplicates = options.pop("allow_duplicates", False)
    aligned = align(table, preds, labels, allow_missing, allow_duplicates)
    thresholds = _validation_thresholds(
        validation,
        set(aligned.report.images),
        labels,
        allow_missing,
        allow_duplicates,
        test_predictions,
    )
    if thresholds is None:
        thresholds = fallback
    report = evaluate(
        aligned.labels,
        aligned.probs,
        aligned.report.pathologies,
        aligned.patient_ids,
        thresholds=thresholds,
        notes=aligned.report.notes,
        sources={"labels": str(source), "predictions": predictions_name},
        **options,
    )
    return report, thresholds


def evaluate_model(
    model: Any,
    source: _PathLike,
    *,
    validation: ValidationPredictions | Thresholds | _PathLike | None = None,
    format: str | None = None,
    labels: list[str] | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_missing: bool = False,
    allow_duplicates: bool = False,
    progress: bool = False,
    raw: bool = False,
) -> Evaluation:
    """Run a model on ``source`` and evaluate it against the source's labels.

    Args:
        model: a model file path, a :class:`~cxr.modelfile.LoadedModel` or a
            :class:`~cxr.inference.Predictor`.
        source: a prepared cache of the model's size and fit, or a dataset (any format
            :func:`cxr.datasets.load_dataset` reads) whose images are decoded as in training.
        validation: where operating thresholds come from: None = the model file's (chosen on
            validation during training); :class:`ValidationPredictions` or a predictions CSV
            to choose them on; a :class:`Thresholds` or a thresholds JSON file.
        labels: labels to evaluate (default: those both sides have).
        n_bootstrap, seed: patient-bootstrap resamples for the AUC CIs (0 skips them).
        allow_missing: evaluate the images that could be read when some cannot.
        raw: evaluate the model's raw scores, not its calibrated probabilities (with a
            calibration, the report shows ECE and Brier score before and after it either
            way).
    """
    from cxr.evaluation.calibration_check import calibration_table, refuse_calibration_source
    from cxr.inference import Predictor

    predictor = (
        model
        if isinstance(model, Predictor)
        else Predictor(model, device=device, batch_size=batch_size, calibrated=not raw)
    )
    calibration = predictor.calibration
    if calibration is not None:
        refuse_calibration_source(calibration, source, str(predictor.path))
        # predict raw once; the calibrated probabilities are a map of them
        uncalibrated = Predictor(
            predictor.backend, batch_size=predictor.batch_size, tta=predictor.tta, calibrated=False
        )
    table = load_labels(source, format)
    preds = predict_source(
        predictor if calibration is None else uncalibrated,
        source,
        table,
        format=format,
        allow_missing=allow_missing,
        progress=progress,
    )
    raw_preds = preds
    if calibration is not None:
        calibrated = calibration.apply(preds.probs, list(preds.pathologies))
        preds = dataclasses.replace(preds, probs=calibrated.astype(np.float64))
    options = _score_options(labels, allow_missing, allow_duplicates, n_bootstrap, seed)
    report, thresholds = _score(
        table,
        preds,
        source,
        f"model {predictor.path}",
        validation,
        predictor.stored_thresholds(),
        options,
        None,
    )
    if calibration is not None:
        # the calibrated probabilities are a map of the raw ones: align once
        before = align(table, raw_preds, labels, allow_missing, allow_duplicates)
        names = list(before.report.pathologies)
        report.calibration = calibration_table(
            before.labels,
            before.probs,
            calibration.apply(before.probs, names),
            names,
            calibration,
            report.settings.get("n_bins", 10),
        )
    return Evaluation(report, thresholds, preds)


def _score_options(
    labels: list[str] | None,
    allow_missing: bool,
    allow_duplicates: bool,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """The scoring options :func:`evaluate_model` and :func:`evaluate_predictions` share."""
    return {
        "labels": labels,
        "allow_missing": allow_missing,
        "allow_duplicates": allow_duplicates,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }


def evaluate_predictions(
    predictions: _PathLike,
    source: _PathLike | None = None,
    *,
    validation: ValidationPredictions | Thresholds | _PathLike | None = None,
    format: str | None = None,
    labels: list[str] | None = None,
    image_column: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_missing: bool = False,
    allow_duplicates: bool = False,
) -> Evaluation:
    """Evaluate a predictions CSV (an image column and one ``prob_<Label>`` column per label)
    against ``source``'s labels (default: the CSV's folder when it holds a dataset).
    ``validation`` as in :func:`evaluate_model`; without it no operating points are reported."""
    path = Path(predictions)
    preds = read_predictions(path, labels, image_column)
    source = Path(source) if source is not None else default_source(path)
    options = _score_options(labels, allow_missing, allow_duplicates, n_bootstrap, seed)
    report, thresholds = _score(
        load_labels(source, format), preds, source, str(path), validation, None, options, path
    )
    return Evaluation(report, thresholds)
