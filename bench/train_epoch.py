"""A whole `cxr train` epoch, as a user runs it, against a plain PyTorch loop over the same
images (issue 25): what `bench/train_throughput.py` (a few steps inside the loop) misses.

Usage (from the repository root, on an idle machine; the defaults are the issue's settings:
the pediatric set, EfficientNet-Lite0 with ImageNet weights at 224 px, batch 32, one full
epoch, two cxr/plain pairs; about 30 minutes on an idle 2-core CPU):
    .venv/bin/python bench/train_epoch.py --out train_epoch.json
Quick smoke test (a few minutes; cxr-small-cnn at 64 px on 160 training images):
    .venv/bin/python bench/train_epoch.py --quick

Data: --data (default ../shared/datasets/pediatric-pneumonia, NORMAL/ and PNEUMONIA/
JPEGs) is split by patient (`cxr data split`) and its train and val lists prepared at --size
(`cxr prepare`) under --work-dir, reused when present; --limit N keeps the first N training
rows. Without the folder, phantom radiographs (cxr.synth) stand in for it.

Measurements, each one a fresh process, alternating cxr, plain, cxr, plain (--repeats pairs):
  cxr    `python -m cxr train TRAIN VAL --out RUN --overwrite --backbone B --pretrained P
         --batch-size N --phase1-epochs 0 --phase2-epochs E` with every other setting at its
         default (progress bar, augmentation, weighted BCE, AdamW, channels-last, threads):
         fine-tuning everything for E full epochs, validation, saving and the model's
         not-a-chest-X-ray gate included. Figures: history.csv's ``images_per_second_steady``
         (training images after the first 2 steps of the epoch / their seconds; validation
         and saving are not in it), ``images_per_second`` (the whole epoch, warm-up
         included), and the command's wall seconds (start-up to exit).
  plain  the same model (cxr.models.build_model, same weights), batch, optimiser (AdamW at
         cxr's phase-2 rate and weight decay) and channels-last in a plain loop over the
         same training images held in memory as float tensors (unknown labels as 0,
         BCEWithLogitsLoss, the last incomplete batch dropped, as cxr does), E epochs; the
         same two steady figures, counted the same way, and the process's wall seconds.
The report gives per pair the ratio cxr / plain of the steady and of the whole-epoch rate
(target: steady >= 0.90), their medians, and the 1-minute load average before and after
every measurement: figures taken with a load above 1.5 on a 2-core machine are provisional.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_line, markdown, write_json  # noqa: E402

TARGET = 0.90
PEDIATRIC = HERE.parent.parent / "shared" / "datasets" / "pediatric-pneumonia"


# the data --------------------------------------------------------------------------------
def _cxr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cxr", *args], check=True, capture_output=True)


def caches(args: argparse.Namespace) -> tuple[Path, Path]:
    """The training and validation caches (prepared once, reused)."""
    work = args.work_dir
    if args.data.is_dir():
        splits = work / "splits"
        if not (splits / "train.csv").is_file():
            _cxr("data", "split", str(args.data), "--out", str(splits), "--seed", "0")
        train_list = splits / "train.csv"
        if args.limit:
            lines = train_list.read_text().splitlines()
            train_list = splits / f"train-first-{args.limit}.csv"
            train_list.write_text("\n".join(lines[: args.limit + 1]) + "\n")
        out = []
        for listing in (train_list, splits / "val.csv"):
            cache = work / f"cache-{args.size}px-{listing.stem}"
            _cxr("prepare", str(listing), "--size", str(args.size), "--out", str(cache))
            out.append(cache)
        return out[0], out[1]
    from gpu_train_throughput import phantom_cache

    n_train = args.limit or 2909
    _, train_c = phantom_cache(work, n_train, 64, 256, args.size, os.cpu_count() or 1)
    _, val_c = phantom_cache(work, 128, 64, 256, args.size, os.cpu_count() or 1)
    return train_c.path, val_c.path


# one measurement (a child process for plain; the CLI for cxr) ----------------------------
def run_cxr(m: dict) -> dict:
    run = Path(m["run_dir"])
    cmd = [
        sys.executable, "-m", "cxr", "train", m["train"], m["val"], "--out", str(run),
        "--overwrite", "--backbone", m["backbone"], "--batch-size", str(m["batch_size"]),
        "--phase1-epochs", "0", "--phase2-epochs", str(m["epochs"]),
    ]  # fmt: skip
    if m["pretrained"]:
        cmd += ["--pretrained", m["pretrained"]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    steady = [float(r["images_per_second_steady"]) for r in rows]
    whole = [float(r["images_per_second"]) for r in rows]
    return {
        "steady": statistics.median(steady),
        "whole": statistics.median(whole),
        "epoch_seconds": sum(float(r["seconds"]) for r in rows),
        "wall_seconds": wall,
    }


def plain(m: dict) -> dict:
    import numpy as np
    import torch

    from cxr.cache import PreparedCache
    from cxr.models import ModelSpec, Preprocessing, build_model
    from cxr.training import TrainConfig
    from cxr.training.engine import WARMUP_STEPS

    start = time.perf_counter()
    cache = PreparedCache(m["train"])
    n, b = len(cache), m["batch_size"]
    x_all = torch.from_numpy(cache.read(np.arange(n))).unsqueeze(1).float().div_(255.0)
    x_all = x_all.contiguous(memory_format=torch.channels_last)
    y_all = torch.from_numpy(np.nan_to_num(cache.labels(np.arange(n)), nan=0.0)).float()
    defaults = TrainConfig()
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=tuple(cache.table.pathologies),
        backbone=m["backbone"],
        preprocessing=Preprocessing(size=cache.size, fit=cache.fit),
    )
    model = build_model(spec, pretrained=m["pretrained"] or None)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=defaults.phase2_lr, weight_decay=defaults.weight_decay
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steady, whole, epoch_seconds = [], [], 0.0
    for _ in range(m["epochs"]):
        t0 = warm = time.perf_counter()
        images = warm_images = 0
        steps = n // b
        for i in range(steps):
            x, y = x_all[i * b : (i + 1) * b], y_all[i * b : (i + 1) * b]
            loss_fn(model(x).float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            images += b
            if i + 1 == WARMUP_STEPS and steps > WARMUP_STEPS:
                warm, warm_images = time.perf_counter(), images
        end = time.perf_counter()
        epoch_seconds += end - t0
        steady.append((images - warm_images) / (end - warm))
        whole.append(images / (end - t0))
    return {
        "steady": statistics.median(steady),
        "whole": statistics.median(whole),
        "epoch_seconds": epoch_seconds,
        "wall_seconds": time.perf_counter() - start,  # from data loading on
    }


def run_plain(m: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(m)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]), wall_seconds=wall)
    raise RuntimeError(f"plain loop failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


# the run ---------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=PEDIATRIC, help="image folder (or phantoms)")
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--pretrained", default="imagenet", help="'' for random weights")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="full epochs per measurement")
    p.add_argument("--limit", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--repeats", type=int, default=2, help="cxr/plain pairs (A B A B)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cxr-train-epoch"))
    p.add_argument("--quick", action="store_true", help="smoke test: small CNN, 64 px, 160 images")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.pretrained, args.size, args.batch_size = "cxr-small-cnn", "", 64, 16
        args.limit, args.repeats = args.limit or 160, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        print("RESULT " + json.dumps(plain(json.loads(args.child))), flush=True)
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    train_c, val_c = caches(args)
    m = {
        "train": str(train_c),
        "val": str(val_c),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "run_dir": str(args.work_dir / "run"),
    }
    started = time.perf_counter()
    pairs = []
    for r in range(args.repeats):
        pair = {}
        for side, fn in (("cxr", run_cxr), ("plain", run_plain)):
            load = os.getloadavg()[0]
            pair[side] = dict(fn(m), load_before=load, load_after=os.getloadavg()[0])
            print(f"pair {r + 1} {side}: {pair[side]}", flush=True)
        pairs.append(pair)
    info = {
        "machine": machine_line(),
        "minutes": (time.perf_counter() - started) / 60,
        "train_images": _count(train_c),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("child", "out")},
    }
    print(report(pairs, info))
    if args.out:
        write_json(args.out, {"info": info, "pairs": pairs})


def _count(cache: Path) -> int:
    from cxr.cache import PreparedCache

    return len(PreparedCache(cache))


def report(pairs: list[dict], info: dict) -> str:
    s = info["settings"]
    loads = [
        p[k][w] for p in pairs for k in ("cxr", "plain") for w in ("load_before", "load_after")
    ]
    rows = []
    for i, p in enumerate(pairs, 1):
        c, q = p["cxr"], p["plain"]
        rows.append(
            [
                str(i),
                f"{c['steady']:.2f}",
                f"{q['steady']:.2f}",
                f"{c['steady'] / q['steady']:.2f}",
                f"{c['whole'] / q['whole']:.2f}",
                f"{c['wall_seconds']:.0f}",
                f"{q['wall_seconds']:.0f}",
                f"{max(c['load_before'], c['load_after'], q['load_before'], q['load_after']):.1f}",
            ]
        )
    steady = statistics.median(p["cxr"]["steady"] / p["plain"]["steady"] for p in pairs)
    whole = statistics.median(p["cxr"]["whole"] / p["plain"]["whole"] for p in pairs)
    verdict = "meets" if steady >= TARGET else "below"
    return "\n".join(
        [
            info["machine"],
            f"{s['backbone']} at {s['size']} px, batch {s['batch_size']}, {info['train_images']} "
            f"training images, {s['epochs']} full epoch(s) per measurement, "
            f"{len(pairs)} cxr/plain pair(s), {info['minutes']:.0f} min"
            + (" - provisional (load > 1.5)" if max(loads) > 1.5 else ""),
            "",
            markdown(
                [
                    "pair",
                    "cxr img/s (history.csv, steady)",
                    "plain img/s (steady)",
                    "cxr / plain steady",
                    "cxr / plain whole epoch",
                    "cxr command s",
                    "plain process s",
                    "max load",
                ],
                rows,
            ),
            "",
            f"median cxr / plain: steady {steady:.2f} ({verdict} the {TARGET:.2f} target), "
            f"whole epoch {whole:.2f}",
        ]
    )


if __name__ == "__main__":
    main()
