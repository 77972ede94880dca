"""Calibration on real images: ECE and Brier before and after, per label and pooled (issue 17).

The NIH sample in ../shared/datasets/nih14-sample (423 images of 423 patients) is split by
patient 70/15/15, prepared at 224 px, and EfficientNet-Lite0 (ImageNet weights, the one
real pretrained backbone available offline) is trained with the documented CPU recipe (one
epoch with the backbone frozen, two fine-tuning, the default weighted BCE loss). Training
fits the calibration (Platt by default) on the validation cache; the test cache is then
evaluated with the raw and the calibrated probabilities.

    python bench/calibration_nih.py [--out /tmp/cxr-calibration] [--epochs 1,2]

Prints the table that BENCHMARKS.md quotes and writes the evaluation report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "datasets" / "nih14-sample"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/cxr-calibration"))
    ap.add_argument("--epochs", default="1,2", help="phase-1,phase-2 epochs (default: 1,2)")
    ap.add_argument("--method", default="platt")
    args = ap.parse_args()
    from cxr.cache import prepare
    from cxr.datasets import load_dataset
    from cxr.evaluation import evaluate_model
    from cxr.split import split_by_patient, split_tables
    from cxr.training import TrainConfig, train

    started = time.time()
    table = load_dataset(SAMPLE)
    parts = split_tables(
        table, split_by_patient(table, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    )
    caches = {}
    for name, part in parts.items():
        caches[name] = args.out / "cache" / name
        prepare(part, caches[name], 224, workers=2, progress=False)
    p1, p2 = (int(x) for x in args.epochs.split(","))
    config = TrainConfig(
        backbone="efficientnet-lite0",
        pretrained="imagenet",
        phase1_epochs=p1,
        phase2_epochs=p2,
        batch_size=32,
        device="cpu",
        calibration=args.method,
    )
    result = train(
        config, caches["train"], caches["val"], args.out / "run", overwrite=True, progress=False
    )
    evaluation = evaluate_model(result.best_model, caches["test"], n_bootstrap=200)
    evaluation.save(args.out / "report")
    report = evaluation.report
    table_ = report.calibration
    assert table_ is not None
    sizes = {k: len(v) for k, v in parts.items()}
    print(f"images per split: {sizes}; wall time {time.time() - started:.0f} s")
    print(f"test macro AUC {report.macro_auc:.3f}")
    print(
        "| label | test positives | ECE raw | ECE calibrated | Brier raw | Brier calibrated | map |"
    )
    print("|---|---|---|---|---|---|---|")
    o = table_["overall"]
    print(
        f"| all (pooled) | {sum(r.n_positive for r in report.labels)} | {o['ece_raw']:.3f} | "
        f"{o['ece']:.3f} | {o['brier_raw']:.3f} | {o['brier']:.3f} | |"
    )
    for r in report.labels:
        c = table_["per_label"][r.name]
        print(
            f"| {r.name} | {r.n_positive} | {c['ece_raw']:.3f} | {c['ece']:.3f} | "
            f"{c['brier_raw']:.3f} | {c['brier']:.3f} | {c['map']} |"
        )
    for note in table_["notes"]:
        print("note:", note)


if __name__ == "__main__":
    main()
