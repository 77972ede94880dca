"""``cxr data inspect|split|check-leakage``, ``cxr prepare`` and ``cxr synth``: datasets,
splits and the decode-once cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr.choices import FIT_MODES
from cxr.cli._common import (
    EXIT_FOUND,
    EXIT_OK,
    CLIError,
    load_sources,
    parse_list,
)
from cxr.cli._dicom import add_dicom_options, with_dicom_options
from cxr.cli.options import add_command, add_json, add_progress, add_seed, add_source_options


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``data`` (inspect, split, check-leakage), ``prepare`` and ``synth``."""
    data = sub.add_parser("data", help="inspect, split and check datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = add_command(
        data_sub, "inspect", cmd_inspect, help="images, patients, views and per-label counts"
    )
    add_source_options(p)
    add_json(p)
    p.add_argument(
        "--no-check-files", action="store_true", help="do not check which image files exist on disk"
    )

    p = add_command(
        data_sub,
        "split",
        cmd_split,
        help="patient-level train/val/test split, stratified by label",
    )
    add_source_options(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for train.csv, val.csv, test.csv, split.csv, split_summary.csv",
    )
    p.add_argument(
        "--fractions",
        default="train=0.8,val=0.1,test=0.1",
        help="split names and fractions of images (default: %(default)s)",
    )
    add_seed(p)
    p.add_argument(
        "--keep-official",
        action="store_true",
        help="images that already have a split (e.g. NIH's official lists) keep it",
    )

    p = add_command(
        data_sub,
        "check-leakage",
        cmd_check_leakage,
        help="patients shared between splits; exit code 1 when any is found",
        description="Report patients that appear in more than one split. Give two or more split "
        "files (any dataset format, e.g. train.csv val.csv test.csv, or NIH's "
        "train_val_list.txt test_list.txt), or one file with a 'split' column. "
        "Exit code 0: no leakage; 1: leakage found; 2: bad input.",
    )
    add_source_options(p)

    p = add_command(
        data_sub,
        "report",
        cmd_report,
        help="a visual report of a dataset (HTML page and figures) before training",
        description="Write DIR/report.html (one self-contained page), report.json and the "
        "figures: images per label, label co-occurrence, labels per image, images per patient, "
        "views, age and sex (when the label CSV has them), prevalence per split with the "
        "leakage check, labels known per source (several sources), image sizes and bit depths "
        "from file headers, sample images per label, and the files that could not be read.",
    )
    add_source_options(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument(
        "--splits",
        type=Path,
        metavar="SPLIT_DIR",
        help="folder of split files (train.csv, val.csv, test.csv from cxr data split) to "
        "compare and check for leakage (default: the splits the source defines, if any)",
    )
    add_seed(p, "chooses the sample images")
    p.add_argument(
        "--per-label", type=int, default=4, help="sample images per label (default: %(default)s)"
    )
    p.add_argument("--no-images", action="store_true", help="tables only: open no image file")

    p = add_command(
        sub,
        "prepare",
        cmd_prepare,
        help="decode every image once into a memory-mappable cache",
        description="Decode and resize every image once into OUT (pixels.npy, "
        "labels.csv, manifest.json, rejects.csv). Resumable: run the "
        "same command again after an interruption.",
    )
    add_source_options(p)
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument(
        "--size", type=int, default=224, help="output side in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--fit",
        choices=FIT_MODES,
        default="pad",
        help="keep the aspect ratio by padding with black to a square (pad, default) "
        "or by cropping the centre square (crop)",
    )
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--strict", action="store_true", help="exit code 1 if any image is rejected")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild OUT if it holds a cache of other settings or images",
    )
    add_progress(p)
    add_dicom_options(p)

    p = add_command(
        sub, "synth", cmd_synth, help="generate phantom chest radiographs with planted findings"
    )
    p.add_argument("out", type=Path, help="output folder (images/, masks/, labels.csv)")
    p.add_argument("--n", type=int, default=600, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="side in pixels (default: %(default)s)")
    add_seed(p)
    p.add_argument(
        "--prevalence",
        type=float,
        default=0.3,
        help="probability of each finding per image (default: %(default)s)",
    )
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    add_progress(p)


def cmd_inspect(args: argparse.Namespace) -> int:
    from cxr.datasets import describe

    summary = describe(load_sources(args), check_files=not args.no_check_files)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.to_text())
    return EXIT_OK


def _split_tables(folder: Path) -> dict:
    """name -> table of each split file in ``folder`` (not split.csv / split_summary.csv)."""
    from cxr.table import LabelTable

    if not folder.is_dir():
        raise CLIError(f"--splits {folder} is not a folder (cxr data split writes one)")
    files = sorted(f for f in folder.glob("*.csv") if f.stem not in ("split", "split_summary"))
    if not files:
        raise CLIError(f"--splits {folder} holds no split files (train.csv, val.csv, ...)")
    order = {"train": 0, "val": 1, "valid": 1, "test": 2}
    files.sort(key=lambda f: (order.get(f.stem, 9), f.stem))
    return {f.stem: LabelTable.read_csv(f) for f in files}


def cmd_report(args: argparse.Namespace) -> int:
    from cxr.datareport import dataset_report, label_csvs, write_dataset_report

    if args.per_label < 1:
        raise CLIError(f"--per-label must be 1 or more, got {args.per_label}")
    sources = {str(s): load_sources(args, [s]) for s in args.source}
    csvs = [c for s in args.source for c in label_csvs(s)]
    report = dataset_report(
        sources,
        splits=_split_tables(args.splits) if args.splits else None,
        csv_paths=csvs,
        seed=args.seed,
        per_label=args.per_label,
        images=not args.no_images,
    )
    written = write_dataset_report(report, args.out)
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {written['html']} ({len(report.figures)} figures) and {written['json']}")
    return EXIT_OK


def _parse_fractions(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parse_list(text, "--fractions") or []:
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise CLIError(
                f"--fractions: {part!r} is not NAME=NUMBER (e.g. train=0.8,val=0.1,test=0.1)"
            ) from None
    return out


def cmd_split(args: argparse.Namespace) -> int:
    from cxr.split import save_split, split_by_patient, split_summary

    table = load_sources(args)
    assignment = split_by_patient(
        table, _parse_fractions(args.fractions), seed=args.seed, keep_existing=args.keep_official
    )
    written = save_split(args.out, table, assignment)
    print(split_summary(table, assignment).to_string(float_format=lambda v: f"{v:.3f}"))
    print("written: " + ", ".join(str(p) for p in written.values()))
    return EXIT_OK


def cmd_check_leakage(args: argparse.Namespace) -> int:
    from cxr.leakage import find_leakage

    repeated = sorted({str(s) for s in args.source if args.source.count(s) > 1})
    if repeated:
        raise CLIError(f"{', '.join(repeated)} is given more than once; give each split file once")
    if len(args.source) == 1:  # one file with a split column (e.g. split.csv)
        table = load_sources(args)
        names = sorted(set(table.meta["split"]) - {""})
        if len(names) < 2:
            raise CLIError(
                f"{args.source[0]} holds {len(names)} split(s); give two or more "
                "split files, or one file with a 'split' column naming two or more"
            )
        tables = {n: table.subset(table.meta["split"].to_numpy() == n) for n in names}
    else:
        tables = {}
        for source in args.source:
            name = str(source)
            tables[name] = load_sources(args, [source])
    report = find_leakage(tables)
    print(report.to_text())
    return EXIT_FOUND if report.leaked else EXIT_OK


@with_dicom_options
def cmd_prepare(args: argparse.Namespace) -> int:
    from cxr.cache import prepare

    table = load_sources(args)
    summary = prepare(
        table,
        args.out,
        args.size,
        args.fit,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        source=", ".join(str(s) for s in args.source),
    )
    print(summary.to_text())
    if args.strict and summary.rejected:
        print(f"--strict: {summary.rejected} image(s) rejected", file=sys.stderr)
        return EXIT_FOUND
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from cxr.synth import SynthConfig, generate_phantoms

    config = SynthConfig(
        n_images=args.n, size=args.size, seed=args.seed, prevalence=args.prevalence
    )
    table = generate_phantoms(args.out, config, workers=args.workers, progress=not args.no_progress)
    print(
        f"wrote {len(table)} phantom images of {len(set(table.patient_ids))} patients to "
        f"{args.out} (labels: {', '.join(table.pathologies)}; labels.csv, images/, masks/)"
    )
    return EXIT_OK
