"""The ``cxr`` command line: a thin layer over the Python API.

Every sub-command parses its arguments, calls one API function and prints its result.
Errors in the user's input (a bad file, a wrong option) are printed as one line naming
what was wrong, with exit code 2; set ``CXR_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr import __version__

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A user error the CLI reports in one line (exit code 2)."""


# dataset options shared by every command that reads a dataset --------------------------
def _add_source_options(p: argparse.ArgumentParser, many: bool = True) -> None:
    p.add_argument("source", nargs="+" if many else None, type=Path,
                   help="dataset: a folder or a label file (NIH Data_Entry_2017.csv, CheXpert "
                        "train.csv/valid.csv, a plain CSV, a folder per class, a .txt image list)"
                        + ("; several are merged over the union of their labels" if many else ""))
    g = p.add_argument_group("dataset options (each applies to the formats that have it)")
    g.add_argument("--format", choices=("nih", "chexpert", "csv", "folders", "list"),
                   help="dataset format (default: detected from the files present)")
    g.add_argument("--uncertain", choices=("ones", "zeros", "ignore"),
                   help="CheXpert: uncertain (-1) labels become 1 (U-Ones), 0 (U-Zeros) or unknown")
    g.add_argument("--blank", choices=("nan", "zero"),
                   help="CheXpert: a blank label is unknown (nan, default) or absent (zero)")
    g.add_argument("--all-views", action="store_true",
                   help="CheXpert: keep lateral views too (default: frontal only)")
    g.add_argument("--image-column", help="plain CSV: the column holding image file names")
    g.add_argument("--patient-column", help="plain CSV: the column holding patient ids")
    g.add_argument("--image-root", type=Path,
                   help="plain CSV: folder the image names are relative to (default: the CSV's)")
    g.add_argument("--labels", help="comma-separated labels to keep, in this order "
                                    "(default: all labels of the dataset)")


def _reader_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if args.uncertain:
        options["uncertain"] = args.uncertain
    if args.blank:
        options["blank"] = args.blank
    if args.all_views:
        options["frontal_only"] = False
    if args.image_column:
        options["image_column"] = args.image_column
    if args.patient_column:
        options["patient_column"] = args.patient_column
    if args.image_root:
        options["image_root"] = args.image_root
    return options


def _load(args: argparse.Namespace, sources: Sequence[Path] | None = None):
    """Read (and merge) the sources; each reader gets the options that apply to its format."""
    from cxr.datasets import detect_format, load_dataset, reader_options
    from cxr.table import merge_tables

    sources = list(sources if sources is not None else args.source)
    options = _reader_options(args)
    formats = [args.format or detect_format(s) for s in sources]
    unused = set(options) - {k for f in formats for k in reader_options(f)}
    if unused:
        raise CLIError(
            f"option(s) {sorted(unused)} do not apply to the dataset format(s) "
            f"{sorted(set(formats))} of {', '.join(map(str, sources))}"
        )
    tables = [
        load_dataset(s, format=f, **{k: v for k, v in options.items() if k in reader_options(f)})
        for s, f in zip(sources, formats)
    ]
    table = tables[0] if len(tables) == 1 else merge_tables(tables)
    if args.labels:
        table = table.select_labels([n.strip() for n in args.labels.split(",") if n.strip()])
    return table


# commands -----------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from cxr.datasets import describe

    summary = describe(_load(args), check_files=not args.no_check_files)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.to_text())
    return EXIT_OK


def _parse_fractions(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--fractions: {part!r} is not NAME=NUMBER (e.g. train=0.8,val=0.1,test=0.1)")
    return out


def cmd_split(args: argparse.Namespace) -> int:
    from cxr.split import save_split, split_by_patient, split_summary

    table = _load(args)
    assignment = split_by_patient(table, _parse_fractions(args.fractions), seed=args.seed,
                                  keep_existing=args.keep_official)
    written = save_split(args.out, table, assignment)
    print(split_summary(table, assignment).to_string(float_format=lambda v: f"{v:.3f}"))
    print("written: " + ", ".join(str(p) for p in written.values()))
    return EXIT_OK


def cmd_check_leakage(args: argparse.Namespace) -> int:
    from cxr.leakage import find_leakage

    if len(args.source) == 1:  # one file with a split column (e.g. split.csv)
        table = _load(args)
        names = sorted(set(table.meta["split"]) - {""})
        if len(names) < 2:
            raise CLIError(f"{args.source[0]} holds {len(names)} split(s); give two or more "
                           "split files, or one file with a 'split' column naming two or more")
        tables = {n: table.subset(table.meta["split"].to_numpy() == n) for n in names}
    else:
        tables = {}
        for source in args.source:
            name = str(source)
            tables[name] = _load(args, [source])
    report = find_leakage(tables)
    print(report.to_text())
    return EXIT_FOUND if report.leaked else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from cxr.cache import prepare

    table = _load(args)
    summary = prepare(table, args.out, args.size, args.fit, workers=args.workers,
                      progress=not args.no_progress, overwrite=args.overwrite,
                      source=", ".join(str(s) for s in args.source))
    print(summary.to_text())
    if args.strict and summary.rejected:
        print(f"--strict: {summary.rejected} image(s) rejected", file=sys.stderr)
        return EXIT_FOUND
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from cxr.synth import SynthConfig, generate_phantoms

    config = SynthConfig(n_images=args.n, size=args.size, seed=args.seed, prevalence=args.prevalence)
    table = generate_phantoms(args.out, config, workers=args.workers, progress=not args.no_progress)
    print(f"wrote {len(table)} phantom images of {len(set(table.patient_ids))} patients to "
          f"{args.out} (labels: {', '.join(table.pathologies)}; labels.csv, images/, masks/)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from cxr.demo import run_demo

    if args.data is not None and not args.data.exists():
        raise CLIError(f"--data {args.data} does not exist")
    run_demo(args.out, n_images=args.n, size=args.size, workers=args.workers, seed=args.seed,
             data=args.data, epochs=args.epochs, backbone=args.backbone, device=args.device)
    return EXIT_OK


# parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cxr import RESEARCH_NOTICE

    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Multi-label chest X-ray classification: datasets, decode-once cache, "
                    f"training, evaluation, prediction and Grad-CAM explanations. {RESEARCH_NOTICE}",
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect, split and check datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("inspect", help="images, patients, views and per-label counts")
    _add_source_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-check-files", action="store_true",
                   help="do not check which image files exist on disk")
    p.set_defaults(func=cmd_inspect)

    p = data_sub.add_parser("split", help="patient-level train/val/test split, stratified by label")
    _add_source_options(p)
    p.add_argument("--out", type=Path, required=True,
                   help="folder for train.csv, val.csv, test.csv, split.csv, split_summary.csv")
    p.add_argument("--fractions", default="train=0.8,val=0.1,test=0.1",
                   help="split names and fractions of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--keep-official", action="store_true",
                   help="images that already have a split (e.g. NIH's official lists) keep it")
    p.set_defaults(func=cmd_split)

    p = data_sub.add_parser(
        "check-leakage", help="patients shared between splits; exit code 1 when any is found",
        description="Report patients that appear in more than one split. Give two or more split "
                    "files (any dataset format, e.g. train.csv val.csv test.csv, or NIH's "
                    "train_val_list.txt test_list.txt), or one file with a 'split' column. "
                    "Exit code 0: no leakage; 1: leakage found; 2: bad input.")
    _add_source_options(p)
    p.set_defaults(func=cmd_check_leakage)

    p = sub.add_parser("prepare", help="decode every image once into a memory-mappable cache",
                       description="Decode and resize every image once into OUT (pixels.npy, "
                                   "labels.csv, manifest.json, rejects.csv). Resumable: run the "
                                   "same command again after an interruption.")
    _add_source_options(p)
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--size", type=int, default=224, help="output side in pixels (default: %(default)s)")
    p.add_argument("--fit", choices=("pad", "crop"), default="pad",
                   help="keep the aspect ratio by padding with black to a square (pad, default) "
                        "or by cropping the centre square (crop)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--strict", action="store_true", help="exit code 1 if any image is rejected")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild OUT if it holds a cache of other settings or images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("synth", help="generate phantom chest radiographs with planted findings")
    p.add_argument("out", type=Path, help="output folder (images/, masks/, labels.csv)")
    p.add_argument("--n", type=int, default=600, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--prevalence", type=float, default=0.3,
                   help="probability of each finding per image (default: %(default)s)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "demo", help="the whole pipeline on generated phantoms (no data, no GPU) or on --data",
        description="Generate phantoms (or read --data), split by patient, check leakage, prepare the "
                    "cache, train a model, evaluate it on the test split (report with ROC curves), "
                    "predict and explain held-out images, and check where the heatmaps point. "
                    "About two minutes on two CPU cores with the defaults. " + RESEARCH_NOTICE)
    p.add_argument("--out", type=Path, default=Path("cxr-demo"), help="output folder (default: %(default)s)")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="run on this dataset (any format cxr data inspect reads) instead of phantoms")
    p.add_argument("--n", type=int, default=1000, help="phantom images (default: %(default)s)")
    p.add_argument("--size", type=int,
                   help="cache and model input side in pixels (default: 64 for phantoms, 224 with --data)")
    p.add_argument("--epochs", type=int, default=16, help="training epochs (default: %(default)s)")
    p.add_argument("--backbone", default="cxr-small-cnn",
                   help="backbone to train (default: %(default)s; densenet121 wants a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of phantoms, split and training (default: %(default)s)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.set_defaults(func=cmd_demo)

    from cxr import cli_evaluate, cli_predict, cli_train

    cli_train.add_parsers(sub)
    cli_evaluate.add_parsers(sub)
    cli_predict.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cxr.cache import CacheError
    from cxr.training import TrainError

    try:
        return int(args.func(args))
    except (CLIError, CacheError, TrainError, ValueError, TypeError, OSError) as err:
        if os.environ.get("CXR_DEBUG"):
            raise
        print(f"cxr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; work done so far is kept (run the same command to continue)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
