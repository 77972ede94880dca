"""The ``cxr evaluate`` and ``cxr compare`` sub-commands (wired into :mod:`cxr.cli` by
:func:`add_parsers`).

``cxr evaluate SOURCE --model MODEL``
    runs a model file on SOURCE (a prepared cache of the model's size, or a dataset whose
    images are decoded as in training), writes its ``predictions.csv`` and evaluates it at
    the thresholds stored in the model (chosen on validation data during training).

``cxr evaluate [SOURCE] --predictions PRED.csv [--thresholds-from VAL.csv --val-source VAL_SOURCE]``
    scores a predictions CSV against the labels of SOURCE (a dataset in any format
    :func:`cxr.datasets.load_dataset` reads, or a prepared cache folder). Without SOURCE,
    the folder holding the predictions CSV is used when it holds a dataset (e.g.
    ``nih14-sample/peer_predictions.csv``). Operating thresholds come only from other data:
    validation predictions (chosen there, Youden's J or a target sensitivity) or a JSON
    file of thresholds; the test set never picks its own.

``cxr compare PRED_A PRED_B [SOURCE]``
    per-label AUC difference between two prediction files on the same images (DeLong
    test and a paired patient-bootstrap CI).

Both print a short per-label table and write Markdown, JSON, HTML and PNG reports.
A model from a run tracked in MLflow (``cxr train --mlflow``: ``mlflow.json`` beside the
model) gets the test metrics (``test_macro_auc``, ``test_auc_<label>``, ...) and the report
folder logged into its MLflow run (``--no-mlflow`` skips it).
Bad input raises ValueError (printed by ``cxr``'s main as one line, exit code 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxr import RESEARCH_NOTICE
from cxr.choices import THRESHOLD_METHODS
from cxr.cli._common import EXIT_OK, CLIError, parse_list
from cxr.cli.options import (
    add_command,
    add_dataset_format,
    add_run_options,
    add_seed,
    run_settings,
)

if TYPE_CHECKING:
    from cxr.evaluation import ValidationPredictions
    from cxr.evaluation.scoring import EvaluationReport


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    add_dataset_format(p, "SOURCE's")
    p.add_argument(
        "--labels", help="comma-separated labels to evaluate (default: those both sides have)"
    )
    p.add_argument(
        "--image-column",
        help="column of the predictions CSV holding image names (default: detected)",
    )
    p.add_argument(
        "--out", type=Path, default=Path(out_default), help="report folder (default: %(default)s)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="patient bootstrap resamples for the CIs; 0 skips them (default: %(default)s)",
    )
    add_seed(p, "bootstrap seed")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate the images that match when some are on one side only or some predictions "
        "are empty (default: refuse); the report says what was left out",
    )
    p.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep the first of identical repeated prediction rows (default: refuse)",
    )


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``evaluate`` and ``compare`` on a sub-parser set (``set_defaults(func=...)``)."""
    p = add_command(
        subparsers,
        "evaluate",
        run_evaluate,
        help="per-label AUC with CIs, calibration, curves and reports",
        description="Evaluate a model file (run on SOURCE) or a predictions CSV against a "
        "dataset's labels: per-label AUC with a patient-bootstrap CI, prevalence, average "
        "precision, calibration; operating-point metrics at thresholds chosen on validation "
        f"data. Writes report.md/.json/.html and PNG figures. {RESEARCH_NOTICE}",
    )
    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        help="dataset (any supported format) or prepared cache folder with the true labels; "
        "default: the folder of --predictions when it holds a dataset",
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="MODEL",
        help="model file (.safetensors from cxr train, or .onnx from cxr export) to run on "
        "SOURCE; its stored thresholds give the operating points unless --thresholds-from is "
        "given",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="CSV",
        help="predictions CSV: an image column and one probability column per label (prob_<Label>)",
    )
    add_run_options(p, 64, "images per batch for --model")
    p.add_argument(
        "--raw",
        action="store_true",
        help="--model: evaluate the raw scores, not the calibrated probabilities (the report "
        "shows ECE and Brier before and after calibration either way)",
    )
    p.add_argument(
        "--thresholds-from",
        type=Path,
        metavar="VAL_PRED_CSV|JSON",
        help="validation predictions CSV to choose thresholds on (labels from --val-source), or a "
        "JSON file of thresholds; without it no operating-point metrics are reported",
    )
    p.add_argument(
        "--val-source",
        type=Path,
        help="dataset with the validation labels (default: the folder of --thresholds-from)",
    )
    p.add_argument(
        "--threshold-method",
        choices=THRESHOLD_METHODS,
        default="youden",
        help="how thresholds are chosen on validation data (default: %(default)s)",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.9,
        help="with --threshold-method sensitivity (default: %(default)s)",
    )
    p.add_argument(
        "--no-mlflow",
        action="store_true",
        help="--model from a run tracked in MLflow (mlflow.json beside it): do not log the test "
        "metrics and the report into that run (logged by default when MLflow is installed)",
    )
    _common(p, "cxr-eval")

    p = add_command(
        subparsers,
        "compare",
        run_compare,
        help="per-label AUC difference of two prediction files (DeLong, paired bootstrap)",
        description=f"Compare two prediction files on the same images. {RESEARCH_NOTICE}",
    )
    p.add_argument("pred_a", type=Path, help="predictions CSV of model A")
    p.add_argument("pred_b", type=Path, help="predictions CSV of model B")
    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        help="dataset with the labels (default: the folder of PRED_A when it holds a dataset)",
    )
    p.add_argument("--names", help="display names A,B (default: the file names)")
    _common(p, "cxr-compare")


# commands -----------------------------------------------------------------------------
def _validation(args: argparse.Namespace) -> ValidationPredictions | Path | None:
    """Where the operating thresholds come from, as the flags say."""
    from cxr.evaluation import ValidationPredictions

    if args.thresholds_from is None:
        if args.val_source is not None:
            raise CLIError("--val-source needs --thresholds-from VAL_PRED_CSV")
        return None
    if args.thresholds_from.suffix.lower() == ".json":
        return args.thresholds_from
    return ValidationPredictions(
        args.thresholds_from,
        args.val_source,
        args.threshold_method,
        args.target_sensitivity,
        args.format,
        args.image_column,
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the per-label table and write the reports; returns 0."""
    from cxr.evaluation import evaluate_model, evaluate_predictions

    labels = parse_list(args.labels, "--labels")
    options = {
        "validation": _validation(args),
        "format": args.format,
        "labels": labels,
        "n_bootstrap": args.bootstrap,
        "seed": args.seed,
        "allow_missing": args.allow_missing,
        "allow_duplicates": args.allow_duplicates,
    }
    if args.model is not None:
        if args.predictions is not None:
            raise CLIError("give either --model MODEL or --predictions CSV, not both")
        if args.source is None:
            raise CLIError("--model needs SOURCE: the dataset or prepared cache to run it on")
        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
        result = evaluate_model(
            args.model,
            args.source,
            raw=args.raw,
            **run_settings(args),
            **options,
        )
    elif args.predictions is not None:
        result = evaluate_predictions(
            args.predictions, args.source, image_column=args.image_column, **options
        )
    else:
        raise CLIError(
            "give --model MODEL (with SOURCE) or --predictions CSV (a file with one "
            "probability column per label)"
        )
    written = result.save(args.out)
    sys.stdout.write(result.to_text())
    per_label = [k for k in written if k.startswith("roc_") and k != "roc_all"]
    print(
        f"reports written to {args.out}: "
        + ", ".join(p.name for k, p in written.items() if k not in per_label)
        + f", and {len(per_label)} per-label ROC figures (roc_<label>.png)"
    )
    if args.model is not None and not args.no_mlflow:
        _log_to_mlflow(args.model, args.out, result.report)
    return EXIT_OK


def _report_metrics(report: EvaluationReport) -> dict[str, float]:
    """The report's summary and per-label figures as MLflow metrics (NaN ones included;
    :func:`cxr.tracking.mlflow_store.log_evaluation` leaves them out)."""
    out = {
        "macro_auc": report.macro_auc,
        "micro_auc": report.micro_auc,
        "macro_average_precision": report.macro_average_precision,
        "ece": report.ece,
        "brier": report.brier,
        "n_images": float(report.n_images),
    }
    for row in report.labels:
        out[f"auc_{row.name}"] = row.auc
        out[f"average_precision_{row.name}"] = row.average_precision
        if row.operating is not None:
            out[f"sensitivity_{row.name}"] = row.operating.sensitivity
            out[f"specificity_{row.name}"] = row.operating.specificity
    return out


def _log_to_mlflow(model: Path, out: Path, report: EvaluationReport) -> None:
    """Log the evaluation into the MLflow run that trained ``model``, when it was tracked;
    one line says what happened. A tracking failure is reported, not raised: the report is
    written already."""
    from cxr.tracking import LINK_FILE, log_evaluation, mlflow_available, run_link

    link_file = model.parent / LINK_FILE
    if not link_file.is_file():
        return
    if not mlflow_available():
        print(
            f"MLflow: not logged: {link_file} names a tracked run, but MLflow is not "
            "installed (pip install 'cxr[tune]')"
        )
        return
    try:
        link = run_link(model.parent)
        run_id = log_evaluation(model, out, _report_metrics(report))
    except Exception as err:  # the report is written: a tracking failure is only reported
        text = " ".join(str(err).split())
        print(f"MLflow: not logged: {type(err).__name__}: {text}", file=sys.stderr)
        return
    if run_id is not None and link is not None:
        print(
            f"MLflow: test metrics (test_*) and the report logged into run {run_id} at "
            f"{link['tracking_uri']} (--no-mlflow skips this)"
        )


def run_compare(args: argparse.Namespace) -> int:
    """Compare two prediction files; print the per-label table and write the reports."""
    from cxr.evaluation import compare, fmt, load_labels, read_predictions
    from cxr.evaluation.alignment import align_pair
    from cxr.evaluation.pipeline import default_source
    from cxr.evaluation.report import write_comparison_report

    labels = parse_list(args.labels, "--labels")
    preds_a = read_predictions(args.pred_a, labels, args.image_column)
    preds_b = read_predictions(args.pred_b, labels, args.image_column)
    source = args.source or default_source(args.pred_a)
    y, pa, pb, patients, rep = align_pair(
        load_labels(source, args.format),
        preds_a,
        preds_b,
        labels,
        args.allow_missing,
        args.allow_duplicates,
    )
    names = (
        (parse_list(args.names, "--names") or [])
        if args.names
        else [args.pred_a.name, args.pred_b.name]
    )
    if len(names) != 2:
        raise CLIError(f"--names needs two names separated by a comma, got {args.names!r}")
    if names[0] == names[1]:
        names = [f"A ({names[0]})", f"B ({names[1]})"]
    result = compare(
        y,
        pa,
        pb,
        rep.pathologies,
        patients,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        model_names=(names[0], names[1]),
        notes=rep.notes,
        sources={"labels": str(source), "A": str(args.pred_a), "B": str(args.pred_b)},
    )
    written = write_comparison_report(result, args.out)
    print(RESEARCH_NOTICE)
    print(f"A = {names[0]}, B = {names[1]}; {result.n_images} images; labels from {source}")
    print(f"{'label':<20} {'AUC A':>6} {'AUC B':>6} {'A-B':>7}  95% CI            p")
    for r in result.rows:
        if math.isnan(r.diff):
            print(f"{r.name:<20} {r.note}")
            continue
        print(
            f"{r.name:<20} {r.auc_a:>6.4f} {r.auc_b:>6.4f} {r.diff:>+7.4f}  "
            f"{fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)}  {r.p_value:.4f}"
        )
    ma, mb = result.macro()
    print(
        f"macro AUC A {fmt(ma, 4)}, B {fmt(mb, 4)} over {len(result.compared)} labels "
        "(p-values unadjusted)"
    )
    if not math.isnan(result.macro_p):
        low, high = result.macro_ci
        print(
            f"macro A-B {ma - mb:+.4f}: 95% CI {fmt(low)} to {fmt(high)}, paired patient "
            f"bootstrap p = {fmt(result.macro_p, 4)}"
        )
    for note in result.notes:
        print(f"note: {note}")
    print(f"reports written to {args.out}: " + ", ".join(p.name for p in written.values()))
    return 0
