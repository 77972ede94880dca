"""Small-data recipes under cross-validation on the NIH sample (issue 26), and the pediatric test.

Every recipe is scored on the same patient-level folds of the NIH sample
(``../shared/datasets/nih14-sample``, 423 images of 423 patients), so their out-of-fold
predictions pair image by image for ``cxr compare``. Stages (each writes --out/<stage>...):

    python bench/small_data_cv.py --stage features --backbone efficientnet-lite0 --size 224
    python bench/small_data_cv.py --stage probe --backbone efficientnet-lite0 --size 224
    python bench/small_data_cv.py --stage finetune --fold 0      # the old default, one fold
    python bench/small_data_cv.py --stage pediatric              # the new default, one split
    python bench/small_data_cv.py --stage table                  # Markdown for BENCHMARKS.md

- ``features``: the pooled features of every image, original and mirror view
  (:func:`cxr.training.probe_features.pooled_features`, the function ``cxr train --recipe
  probe`` uses), of one backbone with its ImageNet weights at one input size; CPU time kept.
- ``probe``: for each seed (--seeds, default 5) the images are split into --folds (5)
  patient-level folds (:func:`cxr.split.patient_folds`, seeded); for each outer fold the
  probe (:func:`cxr.training.probe.fit_probe`, its penalty chosen by an inner 5-fold CV of
  the other folds) is fitted and predicts the held-out fold. Variants: one model or the
  5-member cross-fitted ensemble; the original view or the flip average (TTA); raw or
  calibrated (:func:`cxr.calibration.fit_calibration` on the inner out-of-fold
  predictions, as the recipe does). Scores per seed: pooled out-of-fold macro AUC over the
  14 labels, pooled ECE and Brier over all (image, label) pairs.
- ``finetune``: the old default (EfficientNet-Lite0, ImageNet, two phases sized by the
  data, weighted BCE) on one outer fold of seed 0: the other folds are split 7:1 by
  patient into training and validation, as ``cxr data split`` would; the held-out fold is
  predicted with the best model. Costly (about 17 CPU minutes a fold), hence one seed.
- ``pediatric``: ``../shared/datasets/pediatric-pneumonia`` (3,637 images) split 70/10/20
  by patient, ``cxr train`` with no recipe flag (the size-based default) and the test AUC.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SAMPLE = SHARED / "nih14-sample"
PEDIATRIC = SHARED / "pediatric-pneumonia"
#: the old small-data default: fine-tuning, two phases sized by the data (8 + 13 epochs here)
FINETUNE = dict(
    recipe="finetune",
    backbone="efficientnet-lite0",
    pretrained="imagenet",
    batch_size=32,
    device="cpu",
)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown, write_json  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def sample_table():
    from cxr.datasets import load_dataset

    return load_dataset(SAMPLE)


def sample_cache(out: Path, size: int):
    """The whole NIH sample prepared at ``size`` px (made once)."""
    from cxr.cache import PreparedCache, prepare

    folder = out / f"cache-{size}"
    if not (folder / "manifest.json").is_file():
        prepare(sample_table(), folder, size=size, progress=False, workers=1)
    return PreparedCache(folder)


def feature_file(out: Path, backbone: str, size: int) -> Path:
    return out / f"features-{backbone}-{size}.npz"


def features_stage(out: Path, backbone: str, size: int) -> dict:
    from cxr.models import ModelSpec, Preprocessing, build_model
    from cxr.training.probe_features import pooled_features

    cache = sample_cache(out, size)
    spec = ModelSpec(cache.table.pathologies, backbone, preprocessing=Preprocessing(size=size))
    model = build_model(spec, "imagenet").eval()
    cpu, wall = cpu_seconds(), time.time()
    feats = pooled_features(model, cache, views=("original", "mirror"), batch_size=32)
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    np.savez(
        feature_file(out, backbone, size),
        features=feats,
        labels=cache.table.labels,
        paths=np.array(cache.table.paths),
        names=np.array(cache.table.pathologies),
    )
    return {
        "images": int(feats.shape[1]),
        "dims": int(feats.shape[2]),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    """Pooled macro AUC over labels with both classes, pooled ECE and Brier (known pairs)."""
    from cxr.evaluation.calibration_check import brier_score
    from cxr.evaluation.metrics import expected_calibration_error, roc_auc

    aucs = []
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j])
        if 0 < y[ok, j].sum() < ok.sum():
            aucs.append(roc_auc(y[ok, j], p[ok, j]))
    ok = np.isfinite(y)
    return {
        "macro_auc": float(np.mean(aucs)),
        "labels": len(aucs),
        "ece": float(expected_calibration_error(y[ok], p[ok])),
        "brier": float(brier_score(y[ok], p[ok])),
    }


def probe_stage(out: Path, backbone: str, size: int, seeds: int, folds: int) -> dict:
    from cxr.calibration import fit_calibration
    from cxr.split import patient_folds
    from cxr.training.probe import fit_probe

    data = np.load(feature_file(out, backbone, size))
    feats, y, names = data["features"], data["labels"].astype(float), list(data["names"])
    paths = data["paths"]
    table = sample_table()  # the patient ids (one image per patient in the sample)
    assert list(table.paths) == list(paths), "feature rows must follow the sample's table"
    avg = feats.mean(axis=0)  # flip-averaged features (N, C), what the recipe fits on
    variants = ("single", "single+tta", "ensemble", "ensemble+tta")
    results: dict = {v: [] for v in variants}
    results.update({v + "+cal": [] for v in variants})
    cpu, wall = cpu_seconds(), time.time()
    oof_dir = out / f"oof-{backbone}-{size}"
    oof_dir.mkdir(exist_ok=True)
    for seed in range(seeds):
        outer = patient_folds(table, folds, seed=seed)
        oof = {v: np.full(y.shape, np.nan) for v in results}
        for k in range(folds):
            tr, te = np.flatnonzero(outer != k), np.flatnonzero(outer == k)
            inner = patient_folds(table.subset(tr), 5, seed=seed)
            for members, name in ((1, "single"), (5, "ensemble")):
                # as the recipe: fitted on the flip average, penalty and calibration
                # chosen on the original view (what the saved model sees)
                fit = fit_probe(avg[tr], y[tr], inner, members=members, oof_features=feats[0, tr])
                cal = fit_calibration(y[tr], fit.oof, names, method="platt")
                p0 = fit.predict(feats[0, te])
                p_tta = 0.5 * (p0 + fit.predict(feats[1, te]))
                for suffix, p in (("", p0), ("+tta", p_tta)):
                    oof[name + suffix][te] = p
                    oof[name + suffix + "+cal"][te] = cal.apply(p, names)
        for v, p in oof.items():
            results[v].append(scores(y, p))
            if seed == 0:
                _write_predictions(oof_dir / f"{v}.csv", paths, names, p)
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    summary = {
        v: {
            key: [float(np.mean([r[key] for r in rs])), float(np.std([r[key] for r in rs]))]
            for key in ("macro_auc", "ece", "brier")
        }
        for v, rs in results.items()
    }
    return {"seeds": seeds, "folds": folds, "per_seed": results, "summary": summary,
            "cpu_s": cpu, "wall_s": wall}  # fmt: skip


def _write_predictions(path: Path, paths, names, p: np.ndarray) -> None:
    import pandas as pd

    frame = pd.DataFrame({"Image Index": [Path(x).name for x in paths]})
    for j, name in enumerate(names):
        frame[f"prob_{name}"] = p[:, j]
    frame.to_csv(path, index=False)


def _tag(backbone: str, size: int) -> str:
    """The folder suffix of a fine-tuning configuration ('' for the old default's)."""
    return "" if (backbone, size) == (FINETUNE["backbone"], 224) else f"-{backbone}-{size}"


def finetune_stage(out: Path, fold: int, folds: int, backbone: str, size: int) -> dict:
    from cxr.cache import prepare
    from cxr.inference import Predictor
    from cxr.split import patient_folds, split_by_patient
    from cxr.training import TrainConfig, train

    table = sample_table()
    outer = patient_folds(table, folds, seed=0)
    rest = table.subset(np.flatnonzero(outer != fold))
    test = table.subset(np.flatnonzero(outer == fold))
    inner = split_by_patient(rest, {"train": 7 / 8, "val": 1 / 8}, seed=0)
    base = out / f"finetune{_tag(backbone, size)}-fold{fold}"
    caches = {}
    for name, part in (
        ("train", rest.subset(np.flatnonzero(inner == "train"))),
        ("val", rest.subset(np.flatnonzero(inner == "val"))),
        ("test", test),
    ):
        caches[name] = base / name
        prepare(part, caches[name], size=size, progress=False, workers=1)
    config = TrainConfig(**{**FINETUNE, "backbone": backbone})
    cpu, wall = cpu_seconds(), time.time()
    result = train(config, caches["train"], caches["val"], base / "run", overwrite=True,
                   progress=False)  # fmt: skip
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    raw = Predictor(result.best_model, calibrated=False).predict_cache(caches["test"])
    cal = Predictor(result.best_model).predict_cache(caches["test"])
    np.savez(base / "test_probs.npz", raw=raw, cal=cal, paths=np.array(test.paths))
    return {"fold": fold, "epochs": result.epochs_run, "val_macro_auc": result.best_auc,
            "cpu_s": cpu, "wall_s": wall, "test_images": len(test)}  # fmt: skip


def _fold_calibrated(base: Path, raw_test: np.ndarray) -> np.ndarray:
    """The fold's test probabilities calibrated as ``cxr train`` calibrates today: the map
    fitted on the best model's validation predictions, after the loss's prior shift."""
    from cxr.cache import PreparedCache
    from cxr.calibration import fit_calibration
    from cxr.inference import Predictor
    from cxr.losses import prior_shift

    val, train = PreparedCache(base / "val"), PreparedCache(base / "train")
    names = list(val.table.pathologies)
    raw_val = Predictor(base / "run" / "best.safetensors", calibrated=False).predict_cache(val)
    shift = prior_shift(FINETUNE.get("loss", "weighted-bce"), train.table.labels)
    cal = fit_calibration(val.table.labels, raw_val, names, method="platt", shift=shift)
    return cal.apply(raw_test, names)


def finetune_oof(out: Path, folds: int, backbone: str, size: int) -> dict | None:
    """Join the finished folds' test predictions into out-of-fold scores (all folds needed);
    the calibrated ones are recomputed from the raw ones with today's calibration code."""
    table = sample_table()
    y = table.labels.astype(float)
    index = {p: i for i, p in enumerate(table.paths)}
    got = {"raw": np.full(y.shape, np.nan), "cal": np.full(y.shape, np.nan)}
    done = 0
    for k in range(folds):
        f = out / f"finetune{_tag(backbone, size)}-fold{k}" / "test_probs.npz"
        if not f.is_file():
            continue
        data = np.load(f)
        rows = [index[p] for p in data["paths"]]
        got["raw"][rows] = data["raw"]
        base = out / f"finetune{_tag(backbone, size)}-fold{k}"
        got["cal"][rows] = _fold_calibrated(base, data["raw"])
        done += 1
    if done < folds:
        return {"folds_done": done}
    for key, p in got.items():
        name = f"oof-finetune{_tag(backbone, size)}-{key}.csv"
        _write_predictions(out / name, table.paths, table.pathologies, p)
    return {"folds_done": done, **{k: scores(y, p) for k, p in got.items()}}


def pediatric_stage(out: Path) -> dict:
    """``cxr train`` with no recipe flag (the size-based default) on the pediatric set, split
    70/10/20 by patient; the test AUC with a 1,000-resample patient bootstrap CI."""
    from cxr.cache import prepare
    from cxr.datasets import load_dataset
    from cxr.evaluation import evaluate_model
    from cxr.split import split_by_patient, split_tables
    from cxr.training import TrainConfig, train

    table = load_dataset(PEDIATRIC)
    parts = split_tables(
        table, split_by_patient(table, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    )
    base = out / "pediatric"
    caches = {}
    cpu, wall = cpu_seconds(), time.time()
    for name, part in parts.items():
        caches[name] = base / name
        prepare(part, caches[name], size=224, progress=False)
    prep_cpu, prep_wall = cpu_seconds() - cpu, time.time() - wall
    cpu, wall = cpu_seconds(), time.time()
    result = train(TrainConfig(device="cpu"), caches["train"], caches["val"], base / "run",
                   overwrite=True, progress=False)  # fmt: skip
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    report = evaluate_model(result.best_model, caches["test"], n_bootstrap=1000).report
    return {
        "images": {k: len(v) for k, v in parts.items()},
        "test_positives": int(np.nansum(parts["test"].labels)),
        "test_auc": report.macro_auc,
        "report": report.to_dict() if hasattr(report, "to_dict") else None,
        "prepare_cpu_s": prep_cpu, "prepare_wall_s": prep_wall,
        "train_cpu_s": cpu, "train_wall_s": wall,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True,
                    choices=["features", "probe", "finetune", "pediatric", "table"])  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("/tmp/cxr-small-cv"))
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # one results file per stage, so that stages can run side by side
    path = args.out / f"results-{args.stage}.json"
    if args.stage == "finetune" and _tag(args.backbone, args.size):  # folds run side by side
        path = args.out / f"results-finetune{_tag(args.backbone, args.size)}-fold{args.fold}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    key = args.stage
    if args.stage == "features":
        key = f"features {args.backbone} {args.size}"
        results[key] = features_stage(args.out, args.backbone, args.size)
    elif args.stage == "probe":
        key = f"probe {args.backbone} {args.size}"
        results[key] = probe_stage(args.out, args.backbone, args.size, args.seeds, args.folds)
    elif args.stage == "finetune":
        tag = _tag(args.backbone, args.size)
        key = f"finetune{tag} fold {args.fold}"
        results[key] = finetune_stage(args.out, args.fold, args.folds, args.backbone, args.size)
        results[f"finetune{tag} oof"] = finetune_oof(args.out, args.folds, args.backbone, args.size)
    elif args.stage == "pediatric":
        results[key] = pediatric_stage(args.out)
    elif args.stage == "table":
        every: dict = {}
        for f in sorted(args.out.glob("results-*.json")):
            every.update(json.loads(f.read_text()))
        print(table(every))
        return
    results[key]["machine"] = machine_line()
    write_json(path, results)
    print(json.dumps(results[key], indent=1)[:3000])


def table(results: dict) -> str:
    rows = []
    for key, r in sorted(results.items()):
        if not key.startswith("probe "):
            continue
        for v, s in r["summary"].items():
            rows.append([key[6:], v] + [f"{s[m][0]:.3f} ± {s[m][1]:.3f}"
                                         for m in ("macro_auc", "ece", "brier")])  # fmt: skip
    return markdown(["features", "variant", "macro AUC", "ECE", "Brier"], rows)


if __name__ == "__main__":
    main()
