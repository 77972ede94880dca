"""The default recipe on a small dataset (issue 14): old defaults, new defaults and the best
tuned trial, on one patient-level split of the NIH sample, with CPU time.

    python bench/small_data_recipe.py --stage split      # cxr data split + cxr prepare (224 px)
    python bench/small_data_recipe.py --stage old        # the defaults before issue 14: 2 + 8
    python bench/small_data_recipe.py --stage study --trials 8 --space bench/small_data_space.yaml
    python bench/small_data_recipe.py --stage new        # the defaults of this version
    python bench/small_data_recipe.py --stage table      # the Markdown table for BENCHMARKS.md

Data: ../shared/datasets/nih14-sample (423 images of 423 patients), split by patient with
`cxr data split` (its default fractions train=0.8, val=0.1, test=0.1, seed 0: 338 / 42 / 43
images) and prepared at 224 px with `cxr prepare`. Every run is EfficientNet-Lite0 with its
ImageNet weights (the one real pretrained backbone available offline) on the CPU, batch 32,
through the library functions `cxr train` and `cxr tune` call; the best model (validation
macro AUC) of each is evaluated on the test split (`cxr.evaluation.evaluate_model`, 200
bootstrap resamples; the macro AUC is over the labels with positives and negatives in the
test split). CPU time is the process's user + system time
(`resource.getrusage`), wall time is given beside it. Results go to --out/results.json, one
entry per stage, so the stages can run in separate invocations.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "datasets" / "nih14-sample"
BASE = dict(backbone="efficientnet-lite0", pretrained="imagenet", batch_size=32, device="cpu")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def split_and_prepare(out: Path) -> dict:
    from cxr.cli import main

    if main(["data", "split", str(SAMPLE), "--out", str(out / "split")]) != 0:
        raise SystemExit("cxr data split failed")
    sizes = {}
    for name in ("train", "val", "test"):
        argv = ["prepare", str(out / "split" / f"{name}.csv"), "--out", str(out / name)]
        if main([*argv, "--size", "224", "--no-progress"]) != 0:
            raise SystemExit(f"cxr prepare {name} failed")
        from cxr.cache import PreparedCache

        sizes[name] = len(PreparedCache(out / name))
    return {"images": sizes}


def test_auc(model: Path, out: Path) -> dict:
    from cxr.evaluation import evaluate_model

    report = evaluate_model(model, out / "test", n_bootstrap=200).report
    return {"test_macro_auc": report.macro_auc, "test_auc_labels": len(report.macro_auc_labels)}


def train_stage(out: Path, name: str, **changes) -> dict:
    from cxr.training import TrainConfig, train

    config = TrainConfig(**BASE, **changes)
    cpu, wall = cpu_seconds(), time.time()
    result = train(config, out / "train", out / "val", out / f"run-{name}", overwrite=True,
                   progress=False)  # fmt: skip
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    return {
        "config": {k: v for k, v in config.to_dict().items() if k in {*changes, *BASE}},
        "epochs": result.epochs_run,
        "val_macro_auc": result.best_auc,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        **test_auc(result.best_model, out),
    }


def study_stage(out: Path, trials: int, timeout: float | None, space: Path | None) -> dict:
    from cxr.training import TrainConfig
    from cxr.tuning import SearchSpace, tune

    cpu, wall = cpu_seconds(), time.time()
    result = tune(
        TrainConfig(**BASE),
        out / "train",
        out / "val",
        out / "study",
        trials,
        space=SearchSpace.load(space) if space else None,
        timeout=timeout,
    )
    cpu, wall = cpu_seconds() - cpu, time.time() - wall
    return {
        "trials": trials,
        "best_trial": result.best_trial,
        "counts": result.counts,
        "best_config": None if result.best_config is None else result.best_config.to_dict(),
        "best_run": str(result.best_run_dir),
        "val_macro_auc": result.best_value,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        **test_auc(Path(result.best_run_dir) / "best.safetensors", out),
    }


def table(results: dict) -> str:
    rows = [
        "| recipe | epochs | val macro AUC | test macro AUC (labels) | CPU time | wall time |",
        "|---|---|---|---|---|---|",
    ]
    names = {"old": "old defaults (2 + 8 epochs)", "new": "new defaults (sized by the data)",
             "study": "best tuned trial"}  # fmt: skip
    for key, label in names.items():
        r = results.get(key)
        if r is None:
            continue
        epochs = r.get("epochs", f"{r.get('trials')} trials")
        rows.append(
            f"| {label} | {epochs} | {r['val_macro_auc']:.3f} | {r['test_macro_auc']:.3f} "
            f"({r['test_auc_labels']}) | {r['cpu_seconds'] / 60:.0f} min | "
            f"{r['wall_seconds'] / 60:.0f} min |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, choices=["split", "old", "new", "study", "table"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/cxr-small-data"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--timeout", type=float, help="seconds for the study")
    ap.add_argument("--space", type=Path, help="a search-space YAML for the study")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.stage == "split":
        results["split"] = split_and_prepare(args.out)
    elif args.stage == "old":
        results["old"] = train_stage(args.out, "old", phase1_epochs=2, phase2_epochs=8)
    elif args.stage == "new":
        results["new"] = train_stage(args.out, "new")
    elif args.stage == "study":
        results["study"] = study_stage(args.out, args.trials, args.timeout, args.space)
    done = results.get(args.stage)
    results = json.loads(path.read_text()) if path.is_file() else {}  # other stages may
    if done is not None:  # have finished meanwhile, in other processes
        results[args.stage] = done
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get(args.stage, {}), indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
