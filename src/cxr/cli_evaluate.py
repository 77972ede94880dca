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
Bad input raises ValueError (printed by ``cxr``'s main as one line, exit code 2).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cxr import RESEARCH_NOTICE
from cxr.evaluate import NO_THRESHOLDS, compare, evaluate, fmt
from cxr.predictions import align, align_pair, read_predictions
from cxr.table import LabelTable
from cxr.thresholds import METHODS, Thresholds, choose_thresholds


class EvaluateCLIError(ValueError):
    """A user error of ``cxr evaluate`` / ``cxr compare``; printed as one line."""


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--format", choices=("nih", "chexpert", "csv", "folders", "list"),
                   help="format of SOURCE (default: detected from the files present)")
    p.add_argument("--labels", help="comma-separated labels to evaluate (default: those both sides have)")
    p.add_argument("--image-column", help="column of the predictions CSV holding image names (default: detected)")
    p.add_argument("--out", type=Path, default=Path(out_default), help="report folder (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="patient bootstrap resamples for the CIs; 0 skips them (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the images that match when some are on one side only or some predictions "
                        "are empty (default: refuse); the report says what was left out")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="keep the first of identical repeated prediction rows (default: refuse)")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` and ``compare`` on a sub-parser set (``set_defaults(func=...)``)."""
    p = subparsers.add_parser(
        "evaluate", help="per-label AUC with CIs, calibration, curves and reports",
        description="Evaluate a model file (run on SOURCE) or a predictions CSV against a dataset's labels: per-label AUC with a patient-bootstrap "
                    "CI, prevalence, average precision, calibration; operating-point metrics at thresholds "
                    f"chosen on validation data. Writes report.md/.json/.html and PNG figures. {RESEARCH_NOTICE}")
    p.add_argument("source", nargs="?", type=Path,
                   help="dataset (any supported format) or prepared cache folder with the true labels; default: "
                        "the folder of --predictions when it holds a dataset")
    p.add_argument("--model", type=Path, metavar="MODEL",
                   help="model file (.safetensors from cxr train) to run on SOURCE; its stored thresholds "
                        "give the operating points unless --thresholds-from is given")
    p.add_argument("--predictions", type=Path, metavar="CSV",
                   help="predictions CSV: an image column and one probability column per label (prob_<Label>)")
    p.add_argument("--device", default="cpu", help="torch device for --model (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch for --model (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --model")
    p.add_argument("--thresholds-from", type=Path, metavar="VAL_PRED_CSV|JSON",
                   help="validation predictions CSV to choose thresholds on (labels from --val-source), or a "
                        "JSON file of thresholds; without it no operating-point metrics are reported")
    p.add_argument("--val-source", type=Path,
                   help="dataset with the validation labels (default: the folder of --thresholds-from)")
    p.add_argument("--threshold-method", choices=METHODS, default="youden",
                   help="how thresholds are chosen on validation data (default: %(default)s)")
    p.add_argument("--target-sensitivity", type=float, default=0.9,
                   help="with --threshold-method sensitivity (default: %(default)s)")
    _common(p, "cxr-eval")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "compare", help="per-label AUC difference of two prediction files (DeLong, paired bootstrap)",
        description=f"Compare two prediction files on the same images. {RESEARCH_NOTICE}")
    p.add_argument("pred_a", type=Path, help="predictions CSV of model A")
    p.add_argument("pred_b", type=Path, help="predictions CSV of model B")
    p.add_argument("source", nargs="?", type=Path,
                   help="dataset with the labels (default: the folder of PRED_A when it holds a dataset)")
    p.add_argument("--names", help="display names A,B (default: the file names)")
    _common(p, "cxr-compare")
    p.set_defaults(func=run_compare)


# helpers ------------------------------------------------------------------------------
def _label_list(args: argparse.Namespace) -> list[str] | None:
    return [n.strip() for n in args.labels.split(",") if n.strip()] if args.labels else None


def default_source(predictions: Path) -> Path:
    """The dataset beside a predictions CSV: its folder, when that holds a prepared cache or
    a dataset other than the predictions file itself."""
    from cxr.datasets import DatasetError, detect_format

    folder = predictions.absolute().parent  # as the user named it (symbolic links kept)
    if (folder / "manifest.json").is_file():
        return folder
    hint = f"pass the dataset with the true labels as SOURCE (no SOURCE given; {predictions}'s folder {folder}"
    try:
        fmt = detect_format(folder)
    except DatasetError as err:
        raise EvaluateCLIError(f"{hint} holds no dataset: {err})") from None
    if fmt == "csv":
        raise EvaluateCLIError(f"{hint} holds no NIH/CheXpert label file, only CSVs that may be predictions)")
    return folder


def load_labels(source: Path, fmt: str | None = None) -> LabelTable:
    """A dataset's label table, or a prepared cache's (folder with ``manifest.json``)."""
    if source.is_dir() and (source / "manifest.json").is_file() and fmt is None:
        from cxr.cache import PreparedCache

        return PreparedCache(source).table
    from cxr.datasets import load_dataset

    return load_dataset(source, format=fmt)


def _thresholds(args: argparse.Namespace, test_rows: set[str], labels: list[str] | None) -> Thresholds | None:
    path = args.thresholds_from
    if path is None:
        if args.val_source is not None:
            raise EvaluateCLIError("--val-source needs --thresholds-from VAL_PRED_CSV")
        return None
    if path.suffix.lower() == ".json":
        return Thresholds.load(path)
    if args.predictions is not None and path.resolve() == args.predictions.resolve():
        raise EvaluateCLIError(f"--thresholds-from {path} is the test predictions file; thresholds must be "
                               "chosen on validation data, not on the test set")
    val_source = args.val_source or default_source(path)
    val = align(load_labels(val_source, args.format), read_predictions(path, labels, args.image_column),
                labels, args.allow_missing, args.allow_duplicates)
    shared = test_rows & set(val.report.images)
    if shared:
        raise EvaluateCLIError(f"{len(shared)} image(s) are in both the validation data ({val_source}) and the "
                               f"test data (e.g. {min(shared)}); choose thresholds on separate images")
    return choose_thresholds(val.labels, val.probs, val.report.pathologies, args.threshold_method,
                             args.target_sensitivity, source=f"{path} (labels: {val_source})")


def predict_source(args: argparse.Namespace, table: LabelTable):
    """Run ``args.model`` on ``args.source`` (a cache or a dataset): (Predictions, the model's
    stored Thresholds or None)."""
    from cxr.modelfile import ModelFileError
    from cxr.predict import Predictor
    from cxr.predictions import Predictions

    if args.batch_size < 1:
        raise EvaluateCLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
    try:
        predictor = Predictor(args.model, device=args.device, batch_size=args.batch_size)
    except ModelFileError as err:
        raise EvaluateCLIError(str(err)) from None
    is_cache = args.source.is_dir() and (args.source / "manifest.json").is_file() and args.format is None
    notes: tuple[str, ...] = ()
    if is_cache:
        probs = predictor.predict_cache(args.source, progress=not args.no_progress)
    else:
        probs, failed = predictor.predict_paths(table.paths, progress=not args.no_progress)
        if failed:
            i, (reason, detail) = next(iter(failed.items()))
            notes = (f"{len(failed)} image(s) could not be read and have no predictions "
                     f"(e.g. {table.paths[i]}: {reason}: {detail})",)
            if not args.allow_missing:
                raise EvaluateCLIError(f"{notes[0]}; fix or remove them, or pass --allow-missing to "
                                       "evaluate the others")
    preds = Predictions(images=table.paths, probs=probs, pathologies=predictor.labels,
                        source=f"model {args.model}", notes=notes)
    return preds, predictor.stored_thresholds()


# commands -----------------------------------------------------------------------------
def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the per-label table and write the reports; returns 0."""
    from cxr.report import write_report

    labels = _label_list(args)
    model_thresholds = None
    if args.model is not None:
        if args.predictions is not None:
            raise EvaluateCLIError("give either --model MODEL or --predictions CSV, not both")
        if args.source is None:
            raise EvaluateCLIError("--model needs SOURCE: the dataset or prepared cache to run it on")
        source = args.source
        table = load_labels(source, args.format)
        preds, model_thresholds = predict_source(args, table)
        written_preds = Path(args.out) / "predictions.csv"
        from cxr.predictions import write_predictions

        write_predictions(written_preds, preds.images, preds.probs, preds.pathologies)
    elif args.predictions is not None:
        preds = read_predictions(args.predictions, labels, args.image_column)
        source = args.source or default_source(args.predictions)
        table = load_labels(source, args.format)
    else:
        raise EvaluateCLIError("give --model MODEL (with SOURCE) or --predictions CSV (a file with one "
                               "probability column per label)")
    aligned = align(table, preds, labels, args.allow_missing, args.allow_duplicates)
    names = aligned.report.pathologies
    thresholds = _thresholds(args, set(aligned.report.images), labels)
    if thresholds is None and model_thresholds is not None:
        thresholds = model_thresholds
    report = evaluate(aligned.labels, aligned.probs, names, aligned.patient_ids, thresholds=thresholds,
                      n_bootstrap=args.bootstrap, seed=args.seed, notes=aligned.report.notes,
                      sources={"labels": str(source),
                               "predictions": str(args.predictions or f"model {args.model}")})
    written = write_report(report, args.out)
    if args.model is not None:
        written["predictions"] = written_preds
    if thresholds is not None:
        written["thresholds"] = thresholds.save(Path(args.out) / "thresholds.json")
    print(RESEARCH_NOTICE)
    print(f"{report.n_images} images of {report.n_patients} patients; labels from {source}")
    pct = round(100 * (1 - report.settings["alpha"]))
    print(f"{'label':<20} {'n':>6} {'pos':>5}  {'AUC':>6}  {pct}% CI" + ("" if thresholds is None else
          f"          {'thresh':>6} {'sens':>5} {'spec':>5}"))
    for r in report.labels:
        line = f"{r.name:<20} {r.n:>6} {r.n_positive:>5}  {fmt(r.auc, 4):>6}  {fmt(r.auc_ci_low)}-{fmt(r.auc_ci_high)}"
        if r.operating is not None:
            op = r.operating
            line += f"    {op.threshold:>6.3g} {fmt(op.sensitivity, 2):>5} {fmt(op.specificity, 2):>5}"
        print(line)
    left_out = "".join(f"; left out: {k} ({v})" for k, v in report.excluded.items())
    print(f"macro AUC {fmt(report.macro_auc, 4)} over {len(report.macro_auc_labels)} labels{left_out}")
    print(f"micro AUC {fmt(report.micro_auc, 4)}, macro AP {fmt(report.macro_average_precision, 4)}, "
          f"ECE {fmt(report.ece, 4)}")
    print(f"operating thresholds: {report.thresholds or NO_THRESHOLDS}")
    for note in report.notes:
        print(f"note: {note}")
    per_label = [k for k in written if k.startswith("roc_") and k != "roc_all"]
    print(f"reports written to {args.out}: " + ", ".join(p.name for k, p in written.items() if k not in per_label)
          + f", and {len(per_label)} per-label ROC figures (roc_<label>.png)")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Compare two prediction files; print the per-label table and write the reports."""
    from cxr.report import write_comparison_report

    labels = _label_list(args)
    preds_a = read_predictions(args.pred_a, labels, args.image_column)
    preds_b = read_predictions(args.pred_b, labels, args.image_column)
    source = args.source or default_source(args.pred_a)
    y, pa, pb, patients, rep = align_pair(load_labels(source, args.format), preds_a, preds_b, labels,
                                          args.allow_missing, args.allow_duplicates)
    names = [n.strip() for n in args.names.split(",")] if args.names else [args.pred_a.name, args.pred_b.name]
    if len(names) != 2 or not all(names):
        raise EvaluateCLIError(f"--names needs two names separated by a comma, got {args.names!r}")
    if names[0] == names[1]:
        names = [f"A ({names[0]})", f"B ({names[1]})"]
    result = compare(y, pa, pb, rep.pathologies, patients, n_bootstrap=args.bootstrap, seed=args.seed,
                     model_names=(names[0], names[1]), notes=rep.notes,
                     sources={"labels": str(source), "A": str(args.pred_a), "B": str(args.pred_b)})
    written = write_comparison_report(result, args.out)
    print(RESEARCH_NOTICE)
    print(f"A = {names[0]}, B = {names[1]}; {result.n_images} images; labels from {source}")
    print(f"{'label':<20} {'AUC A':>6} {'AUC B':>6} {'A-B':>7}  95% CI            p")
    for r in result.rows:
        if math.isnan(r.diff):
            print(f"{r.name:<20} {r.note}")
            continue
        print(f"{r.name:<20} {r.auc_a:>6.4f} {r.auc_b:>6.4f} {r.diff:>+7.4f}  "
              f"{fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)}  {r.p_value:.4f}")
    ma, mb = result.macro()
    print(f"macro AUC A {fmt(ma, 4)}, B {fmt(mb, 4)} over {len(result.compared)} labels (p-values unadjusted)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"reports written to {args.out}: " + ", ".join(p.name for p in written.values()))
    return 0
