"""`cxr prepare` images/s against the raw decode rate of the same files, in one run.

Usage:
    python bench/prepare_throughput.py [FOLDER] [--size 224] [--repeat 20] [--workers N]

FOLDER holds PNG/JPEG images (default: ../shared/datasets/nih14-fullres/images, 24 NIH
originals at 1024x1024). Each file is listed --repeat times so the timed work is long
enough to measure; the files sit in the OS page cache for both measurements (the first,
untimed pass warms it), so both rates are decode-bound, not disk-bound.

Measured, each with the same number of worker processes:
  raw decode : Pillow open + full decode to a numpy array, nothing else (the ceiling);
  prepare    : cxr.cache.prepare into a fresh cache folder (decode, resize, store, checkpoints).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import machine_line  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "datasets" / "nih14-fullres" / "images"


def _raw_decode(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with Image.open(p) as im:
            total += int(np.asarray(im).shape[0])
    return total


def raw_decode_rate(paths: list[str], workers: int) -> float:
    chunks = [paths[i :: workers * 4] for i in range(workers * 4)]
    start = time.perf_counter()
    if workers == 1:
        _raw_decode(paths)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_raw_decode, chunks)
    return len(paths) / (time.perf_counter() - start)


def prepare_rate(paths: list[str], size: int, workers: int) -> tuple[float, float]:
    """(images/s over the whole call, images/s as the summary reports it)."""
    from cxr.cache import prepare
    from cxr.table import LabelTable

    # the same file listed many times: distinct rows, as prepare sees distinct images
    table = LabelTable.from_columns(
        paths, [str(i) for i in range(len(paths))], np.zeros((len(paths), 0)), []
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = prepare(table, Path(tmp) / "cache", size, workers=workers, progress=False)
        wall = time.perf_counter() - start
    assert summary.stored == len(paths), summary.to_text()
    return len(paths) / wall, summary.images_per_second


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    files = sorted(
        str(p) for p in args.folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    if not files:
        sys.exit(f"no PNG/JPEG images in {args.folder}")
    paths = files * args.repeat
    with Image.open(files[0]) as im:
        shape = f"{im.size[0]}x{im.size[1]} {im.mode}"
    _raw_decode(files)  # warm the page cache
    import PIL

    import cxr

    print(machine_line(Pillow=PIL.__version__, numpy=np.__version__, cxr=cxr.__version__))
    print(
        f"images: {len(files)} files ({shape}) x {args.repeat} = {len(paths)} decodes; "
        f"output {args.size}x{args.size}; workers {args.workers}"
    )
    for workers in sorted({1, args.workers}):
        raw = raw_decode_rate(paths, workers)
        wall, reported = prepare_rate(paths, args.size, workers)
        print(
            f"workers={workers}: raw decode {raw:7.1f} img/s | prepare {wall:7.1f} img/s "
            f"(summary says {reported:.1f}) | prepare/raw = {wall / raw:.2f}"
        )


if __name__ == "__main__":
    main()
