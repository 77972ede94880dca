"""Seconds for patient-resampled bootstrap AUC intervals at NIH test-set scale.

Usage: python bench/bootstrap_speed.py [--n 25000] [--labels 14] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import machine_line  # bench/ is on sys.path when run as a script
from cxr.evaluation import significance as metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=25_000)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    groups = rng.integers(0, int(args.n * 0.36), args.n)
    y = (rng.random((args.n, args.labels)) < 0.08).astype(float)
    p = np.clip(0.2 * y + 0.8 * rng.random((args.n, args.labels)), 0, 1).round(4)
    start = time.perf_counter()
    cis = metrics.bootstrap_auc_ci_many(y, p, groups, n=args.resamples, seed=0)
    seconds = time.perf_counter() - start
    print(machine_line(numpy=np.__version__))
    print(
        f"{args.n} images, {args.labels} labels, {args.resamples} patient resamples: "
        f"{seconds:.2f} s ({sum(ci.n_valid for ci in cis)} valid resamples)"
    )


if __name__ == "__main__":
    main()
