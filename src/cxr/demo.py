"""``cxr demo``: the whole pipeline in one command, on phantoms (no data, no GPU) or on a
real dataset (``--data PATH``).

Steps, each writing into the output folder:

1. data: generate phantom radiographs (``phantoms/``) or read the dataset at ``data``;
   print its label counts;
2. split by patient (``split/``) and check the split for patient leakage;
3. prepare the decode-once cache of each split (``cache/<split>/``);
4. train a model (``run/``: config.yaml, history.csv, best.safetensors ...);
5. evaluate the best model on the test split at the thresholds it chose on validation
   (``report/``: report.md/.json/.html, ROC and PR figures, predictions.csv);
6. predict and explain a few held-out images (``predictions.txt``, ``explain/*.png``);
7. check where the heatmaps point (``localization/``): phantom masks of held-out phantoms
   (new patients), or NIH radiologist boxes when the dataset has them.

The default (1,000 phantoms at 64 px, the small CNN, 16 epochs) takes about 94 s on
two idle CPU cores (measured 2026-12-03). :func:`run_demo` returns the paths written and
``demo.json`` records them with the headline figures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr import RESEARCH_NOTICE

#: Phantom images of the default demo, and the held-out phantoms it explains.
DEMO_IMAGES, HELDOUT_IMAGES = 1000, 200
#: Pixels of the cache and the model input: phantoms / a real dataset.
PHANTOM_SIZE, DATA_SIZE = 64, 224
#: Images predicted and explained (two labels each).
EXPLAINED = 4
#: The pointing game's tolerance (Zhang et al. 2016: 15 px at 224 px), a fraction of the side.
POINTING_TOLERANCE = 15 / 224


def run_demo(
    out: str | Path = "cxr-demo",
    n_images: int = DEMO_IMAGES,
    size: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    data: str | Path | None = None,
    epochs: int = 16,
    backbone: str | None = None,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Run the demo into ``out``; return the paths it wrote (name -> path).

    Args:
        out: output folder.
        n_images: phantom images to generate (ignored with ``data``).
        size: side of the cache and model input in pixels (default 64 for phantoms,
            224 for a dataset).
        workers: processes for generation and decoding (None = all cores).
        seed: seed of the phantoms, the split and the training.
        data: a dataset in any format :func:`cxr.datasets.load_dataset` reads, instead of
            phantoms.
        epochs: training epochs of a fine-tuned backbone (all fine-tuning: the small CNN
            has no pretrained weights; other backbones train the head for 1 epoch first).
        backbone: a registered backbone name (``cxr.models.list_backbones()``). None:
            ``cxr-small-cnn`` on phantoms; with ``data``, the size-based default of
            ``cxr train`` (:mod:`cxr.training.defaults`: recipe, backbone and weights
            chosen by the training set's size), ``epochs`` then unused unless it fine-tunes.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        echo: where progress lines go (``print`` by default).
    """
    from cxr.datasets import describe, load_dataset

    out = Path(out)
    size = size or (DATA_SIZE if data is not None else PHANTOM_SIZE)
    written: dict[str, Path] = {}
    figures: dict[str, Any] = {}
    progress = os.isatty(2)
    echo(RESEARCH_NOTICE)
    if data is None:
        from cxr.synth import SynthConfig, generate_phantoms

        echo(f"[1/7] generating {n_images} phantom radiographs in {out / 'phantoms'}")
        generate_phantoms(
            out / "phantoms",
            SynthConfig(n_images=n_images, size=2 * size, seed=seed),
            workers=workers,
        )
        written["phantoms"] = out / "phantoms"
        table = load_dataset(out / "phantoms")
    else:
        echo(f"[1/7] reading the dataset {data}")
        table = load_dataset(data)
    echo(describe(table).to_text())

    parts = _split(table, out, seed, written, echo)
    caches = _prepare(parts, out, size, workers, progress, written, echo)
    best = _train(
        caches, out, seed, epochs, backbone, device, progress, written, figures, echo, data
    )
    _evaluate(best, caches["test"], out, device, written, figures, echo)
    held = _held_out(data, out, seed, size, workers, parts["test"], written, echo)
    _predict_and_explain(best, held, out, device, written, echo)
    _localize(best, data, out, device, written, figures, echo)

    summary = {
        "notice": RESEARCH_NOTICE,
        "figures": figures,
        "written": {k: str(v) for k, v in written.items()},
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    written["summary"] = out / "demo.json"
    echo("done. Written:")
    for name, path in written.items():
        echo(f"  {name}: {path}")
    return written


def _split(table, out: Path, seed: int, written: dict, echo) -> dict:
    from cxr.leakage import find_leakage
    from cxr.split import save_split, split_by_patient, split_tables

    echo(f"[2/7] splitting by patient into {out / 'split'} and checking for patient leakage")
    assignment = split_by_patient(table, seed=seed)
    written.update(save_split(out / "split", table, assignment))
    parts = split_tables(table, assignment)
    report = find_leakage(parts)
    echo(report.to_text())
    if report.leaked:
        raise RuntimeError("the demo split leaks patients; this is a bug in cxr")
    _dataset_report(table, parts, out, seed, written, echo)
    return parts


def _dataset_report(table, parts: dict, out: Path, seed: int, written: dict, echo) -> None:
    """The visual dataset report (cxr data report) of the data and its split."""
    from cxr.datareport import dataset_report, label_csvs, write_dataset_report

    csvs = label_csvs(table.source) if table.source else []
    report = dataset_report(table, splits=parts, csv_paths=csvs, seed=seed)
    files = write_dataset_report(report, out / "dataset-report")
    written["dataset_report"] = files["html"]
    echo(f"  dataset report ({len(report.figures)} figures): {files['html']}")


def _prepare(
    parts: dict, out: Path, size: int, workers, progress: bool, written: dict, echo
) -> dict:
    from cxr.cache import prepare

    echo(f"[3/7] preparing the decode-once cache ({size}x{size}) of each split")
    caches = {}
    for name, part in parts.items():
        summary = prepare(
            part,
            out / "cache" / name,
            size,
            workers=workers,
            progress=progress,
            source=f"demo {name}",
        )
        echo(summary.to_text())
        caches[name] = written[f"cache_{name}"] = out / "cache" / name
    return caches


def _train(
    caches: dict,
    out: Path,
    seed: int,
    epochs: int,
    backbone: str | None,
    device: str,
    progress: bool,
    written: dict,
    figures: dict,
    echo,
    data: str | Path | None = None,
) -> Path:
    from cxr.training import TrainConfig, train

    if backbone is None and data:  # the default of cxr train, decided by the data
        config = TrainConfig(batch_size=32, device=device, seed=seed)
        echo(f"[4/7] training (cxr train's default for this data) into {out / 'run'}")
    else:
        backbone = backbone or "cxr-small-cnn"
        scratch = backbone == "cxr-small-cnn"
        config = TrainConfig(
            recipe="finetune",
            backbone=backbone,
            pretrained=None if scratch else "auto",
            pool="gem",
            phase1_epochs=0 if scratch else 1,
            phase2_epochs=epochs,
            phase2_lr=3e-3 if scratch else 1e-4,
            batch_size=32,
            device=device,
            seed=seed,
        )
        echo(f"[4/7] training {backbone} for {config.epochs} epochs into {out / 'run'}")
    result = train(
        config, caches["train"], caches["val"], out / "run", progress=progress, echo=echo
    )
    written["run"] = out / "run"
    written["model"] = result.best_model
    figures["val_macro_auc"] = round(result.best_auc, 4)
    figures["best_epoch"] = result.best_epoch + 1
    return result.best_model


def _evaluate(
    model: Path, test_cache: Path, out: Path, device: str, written: dict, figures: dict, echo
) -> None:
    from cxr.evaluation import evaluate_model, fmt

    echo(f"[5/7] evaluating {model.name} on the test split into {out / 'report'}")
    result = evaluate_model(model, test_cache, device=device, batch_size=128)
    report = result.report
    report_files = result.save(out / "report")
    for r in report.labels:
        echo(f"  {r.name:<20} test AUC {fmt(r.auc, 3)} ({fmt(r.auc_ci_low)}-{fmt(r.auc_ci_high)})")
    echo(f"  macro AUC {fmt(report.macro_auc, 4)} over {len(report.macro_auc_labels)} labels")
    figures["test_macro_auc"] = round(float(report.macro_auc), 4)
    figures["test_auc"] = {
        r.name: None if np.isnan(r.auc) else round(float(r.auc), 4) for r in report.labels
    }
    written["report"] = report_files["html"]


def _held_out(
    data, out: Path, seed: int, size: int, workers, test_table, written: dict, echo
) -> list[str]:
    """Images to predict and explain: new phantom patients, or the test split's first images
    with a finding."""
    if data is None:
        from cxr.synth import SynthConfig, generate_phantoms

        echo(
            f"[6/7] generating {HELDOUT_IMAGES} held-out phantoms (new patients) in "
            f"{out / 'heldout'}; predicting and explaining {EXPLAINED} of them"
        )
        held = generate_phantoms(
            out / "heldout",
            SynthConfig(n_images=HELDOUT_IMAGES, size=2 * size, seed=seed + 1000),
            workers=workers,
        )
        written["heldout"] = out / "heldout"
        table = held
    else:
        echo(f"[6/7] predicting and explaining {EXPLAINED} test-split images")
        table = test_table
    with_finding = np.flatnonzero(np.nansum(table.labels, axis=1) > 0)
    rows = list(with_finding[:EXPLAINED]) or list(range(min(EXPLAINED, len(table))))
    return [table.paths[i] for i in rows]


def _predict_and_explain(
    model: Path, paths: list[str], out: Path, device: str, written: dict, echo
) -> None:
    from cxr.explain import explain, save_explanation_png
    from cxr.inference import Predictor

    predictor = Predictor(model, device=device)
    result = predictor.predict_images(paths)
    text = result.render("text")
    (out / "predictions.txt").write_text(text)
    written["predictions"] = out / "predictions.txt"
    echo(text.rstrip())
    count = 0
    for item in result.predicted:
        image = predictor.preprocess(item.path)
        for ex in explain(predictor.model, image, top_k=2):
            save_explanation_png(
                out / "explain" / f"{Path(item.path).stem}_{ex.label}.png",
                image,
                ex,
                source=item.path,
                threshold=predictor.thresholds.get(ex.label),
            )
            count += 1
    written["explain"] = out / "explain"
    echo(f"  wrote {count} Grad-CAM figures (image beside overlay) to {out / 'explain'}")


def _localize(
    model: Path, data, out: Path, device: str, written: dict, figures: dict, echo
) -> None:
    from cxr.evaluation.localization import find_nih_boxes, localization_report

    if data is None:
        source, size = out / "heldout", None
    elif (Path(data) / "masks").is_dir() or find_nih_boxes(Path(data)) is not None:
        source, size = Path(data), None
    else:
        echo("[7/7] localization skipped: the dataset has no phantom masks or NIH boxes")
        return
    echo(
        f"[7/7] checking where the heatmaps point ({source})"
        + (
            ""
            if data is None
            else "; every located finding counts, including those the model trained on"
        )
    )
    from PIL import Image

    from cxr.inference import list_images

    first = list_images([source])[0]
    with Image.open(first) as img:
        size = max(img.size)
    report = localization_report(model, source, tolerance=POINTING_TOLERANCE * size, device=device)
    echo(report.to_text())
    written.update({f"localization_{k}": v for k, v in report.save(out / "localization").items()})
    figures["pointing_game"] = {
        k: round(v["pointing_game"], 3) for k, v in report.per_label.items()
    }
    figures["pointing_game_tolerant"] = {
        k: round(v.get("pointing_game_tolerant", float("nan")), 3)
        for k, v in report.per_label.items()
    }
