"""Time `cxr data split` and `cxr data check-leakage` work on the full NIH metadata.

Usage: python bench/split_leakage.py [NIH_METADATA_DIR]
(default: ../shared/datasets/nih14-metadata, 112,120 images of 30,805 patients).
Prints the time to read the table, split it by patient and check the three splits.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "datasets" / "nih14-metadata"


def main() -> None:
    from cxr.datasets import load_dataset
    from cxr.leakage import find_leakage
    from cxr.split import split_by_patient, split_tables

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}"
    )
    t0 = time.perf_counter()
    table = load_dataset(source)
    t1 = time.perf_counter()
    assignment = split_by_patient(table, seed=0)
    t2 = time.perf_counter()
    report = find_leakage(split_tables(table, assignment))
    t3 = time.perf_counter()
    print(f"{len(table)} images, {len(set(table.patient_ids))} patients")
    print(
        f"read {t1 - t0:.2f} s | split {t2 - t1:.2f} s | leakage check (incl. building the "
        f"3 tables) {t3 - t2:.2f} s | leaked: {report.leaked}"
    )


if __name__ == "__main__":
    main()
