"""The ``cxr predict`` and ``cxr localize`` sub-commands (wired into :mod:`cxr.cli` by
:func:`add_parsers`).

``cxr predict MODEL IMAGE|FOLDER... [--format text|json|csv] [--out FILE]
[--tta [none|flip|all]] [--explain OUTDIR [--top-k 3 | --explain-labels A,B]
[--method gradcam|gradcam++]] [--dicom-out DIR]``
    probabilities of every label for PNG, JPEG and DICOM files (folders searched
    recursively), preprocessed as in training. Exit code 0: every image was predicted;
    1: some file was unreadable (reported by name and skipped); 2: bad usage or model.

``cxr localize MODEL SOURCE [--boxes BBOX_CSV] [--labels A,B] [--method ...] [--out DIR]``
    pointing game and IoU of the heatmaps against phantom masks or NIH boxes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxr import RESEARCH_NOTICE
from cxr.choices import OUTPUT_FORMATS
from cxr.cli._common import EXIT_FOUND, EXIT_OK, CLIError, as_cli_error, keywords, parse_list
from cxr.cli._dicom import add_dicom_options, with_dicom_options
from cxr.cli.options import (
    add_cam_method,
    add_command,
    add_json,
    add_model,
    add_run_options,
    add_tta,
    run_settings,
)

if TYPE_CHECKING:
    from cxr.inference import PredictionResult, Predictor


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``predict`` and ``localize`` (each with ``set_defaults(func=...)``)."""
    p = add_command(
        subparsers,
        "predict",
        run_predict,
        help="label probabilities (and Grad-CAM heatmaps) for image files",
        description="Predict every label for PNG, JPEG or DICOM images, preprocessed as in "
        "training (size and fit read from the model file). Exit code 0: all images predicted; "
        f"1: some file was unreadable and skipped; 2: bad usage or model. {RESEARCH_NOTICE}",
    )
    add_model(
        p,
        "model file: .safetensors written by cxr train, or .onnx written by cxr export "
        "(run on ONNX Runtime, without torch)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IMAGE|FOLDER",
        help="image files and/or folders (searched recursively)",
    )
    p.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="output format (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="write the output to this file (default: stdout)")
    p.add_argument(
        "--explain",
        type=Path,
        metavar="OUTDIR",
        help="write a heatmap PNG (image beside overlay) per image and label here (an .onnx "
        "model: computed from its feature map, for heads of pooling + one linear layer)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="explain the K most probable labels; all of them when the model has fewer "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--explain-labels",
        metavar="A,B",
        help="explain these labels instead of the top K (comma-separated)",
    )
    p.add_argument(
        "--dicom-out",
        type=Path,
        metavar="DIR",
        help="write a DICOM SR (TID 1500) and a Secondary Capture with the heatmap per DICOM "
        "input into DIR (research use only; needs cxr[dicom-node])",
    )
    add_cam_method(p)
    add_tta(p)
    p.add_argument(
        "--raw",
        action="store_true",
        help="show the model's raw scores instead of calibrated probabilities (thresholds "
        "follow, so the above/below marks are the same)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="text output: show the findings of images the not-a-chest-X-ray check flags "
        "too (JSON and CSV always have them, with the check's score and flag)",
    )
    add_run_options(p, 32, precision=True)
    add_dicom_options(p)

    p = add_command(
        subparsers,
        "localize",
        run_localize,
        help="pointing game and IoU of heatmaps vs phantom masks or NIH boxes",
        description="Check where the heatmaps point: the fraction of images whose heatmap peak "
        "lies inside the finding (pointing game) and the IoU of the half-maximum region with "
        f"it, per label. {RESEARCH_NOTICE}",
    )
    add_model(p, "model file")
    p.add_argument(
        "source",
        type=Path,
        help="phantom folder (cxr synth: labels.csv, masks/) or folder of NIH images",
    )
    p.add_argument(
        "--boxes",
        type=Path,
        metavar="BBOX_CSV",
        help="NIH BBox_List_2017.csv.gz (default: looked for near SOURCE)",
    )
    p.add_argument(
        "--labels", help="comma-separated labels (default: the model's labels that have locations)"
    )
    add_cam_method(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="IoU region: heatmap >= THRESHOLD x its maximum (default: %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="PIXELS",
        help="also count peaks within PIXELS of the finding (the original pointing "
        "game uses 15); reported beside the strict rate (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write localization.json and localization.csv here",
    )
    add_json(p)
    add_run_options(p, 16, "maps per batch")


@with_dicom_options
def run_predict(args: argparse.Namespace) -> int:
    """``cxr predict``: returns the exit code."""
    from cxr.images import ImageReadError
    from cxr.inference import Predictor

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
    with as_cli_error(RuntimeError):  # e.g. a CUDA device on a machine without one
        predictor = Predictor(
            args.model,
            calibrated=not args.raw,
            **keywords(args, "device", "tta", "batch_size", "precision"),
        )
    labels = parse_list(args.explain_labels, "--explain-labels")
    if args.dicom_out is not None:
        if args.raw:
            raise CLIError(
                "--dicom-out writes calibrated probabilities: leave out --raw for DICOM results"
            )
        if args.top_k < 1:
            raise CLIError(f"--top-k must be 1 or more, got {args.top_k}")
    if args.explain is not None:
        unknown = [x for x in labels or () if x not in predictor.labels]
        if unknown:
            raise CLIError(
                f"--explain-labels {unknown} are not labels of the model; it "
                f"has {', '.join(predictor.labels)}"
            )
        if labels is None and args.top_k < 1:
            raise CLIError(f"--top-k must be 1 or more, got {args.top_k}")
        if predictor.backend.name == "onnx":  # refuse before predicting anything
            from cxr.explain import check_cam_head

            backend = predictor.backend
            check_cam_head(backend.spec.head, getattr(backend, "head", None), backend.path)
    top_k = min(args.top_k, len(predictor.labels))  # a model with fewer labels: all of them
    for path in args.inputs:
        if path.is_dir() and not any(path.iterdir()):
            raise CLIError(f"folder {path} is empty; give image files or folders of images")
    result = predictor.predict_images(args.inputs, progress=not args.no_progress)
    if not result.items:
        raise CLIError(
            "no image files found in " + ", ".join(map(str, args.inputs)) + " (PNG, JPEG or DICOM)"
        )
    text = result.render(args.format, force=args.force)
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
        except OSError as err:
            raise CLIError(f"cannot write --out {args.out}: {err}") from None
        print(
            f"wrote {args.format} predictions of {len(result.predicted)} image(s) to {args.out}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    if args.format != "text":
        print(RESEARCH_NOTICE, file=sys.stderr)
    for it in result.skipped:
        print(f"cxr predict: skipped {it.path}: {it.reason}: {it.detail}", file=sys.stderr)
    if args.explain is not None and result.predicted:
        from cxr.explain import write_explanations

        try:
            written = write_explanations(
                predictor, result, args.explain, labels, top_k, args.method
            )
        except (OSError, ImageReadError) as err:
            raise CLIError(f"cannot write explanations to {args.explain}: {err}") from None
        print(
            f"wrote {len(written)} explanation PNG(s) ({args.method}) to {args.explain}",
            file=sys.stderr,
        )
    if args.dicom_out is not None and result.predicted:
        _write_dicom_out(predictor, result, args.dicom_out, top_k, args.method)
    return EXIT_OK if result.all_succeeded else EXIT_FOUND


def _write_dicom_out(
    predictor: Predictor, result: PredictionResult, out_dir: Path, top_k: int, method: str
) -> None:
    """``--dicom-out DIR``: the SR and SC of each predicted DICOM input, notes on stderr."""
    from cxr.dicomout.from_prediction import write_dicom_results
    from cxr.images import ImageReadError

    notes: list[str] = []
    try:
        written = write_dicom_results(
            predictor, result, out_dir, top_k=top_k, method=method, skipped=notes
        )
    except (OSError, ImageReadError) as err:
        raise CLIError(f"cannot write DICOM results to {out_dir}: {err}") from None
    for note in notes:
        print(f"cxr predict: --dicom-out: {note}", file=sys.stderr)
    print(
        f"wrote {len(written) // 2} DICOM SR and {len(written) // 2} SC file(s) to {out_dir} "
        f"({RESEARCH_NOTICE})",
        file=sys.stderr,
    )


def run_localize(args: argparse.Namespace) -> int:
    """``cxr localize``: returns the exit code (0, or 2 on bad input)."""
    import json

    from cxr.evaluation.localization import localization_report

    report = localization_report(
        args.model,
        args.source,
        labels=parse_list(args.labels, "--labels"),
        method=args.method,
        boxes=args.boxes,
        threshold=args.threshold,
        tolerance=args.tolerance,
        **run_settings(args),
    )
    if args.json:
        data = report.to_dict()
        data.pop("records")  # per image: in localization.csv with --out
        print(json.dumps(data, indent=2))
    else:
        print(report.to_text())
    if args.out is not None:
        written = report.save(args.out)
        print("written: " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return EXIT_OK
