"""Training images/s of the cxr pipeline against the model-only ceiling, in one run (issue 6).

Usage (from the repository root; the full settings are for an H100):
    python bench/gpu_train_throughput.py --backbone densenet121 --size 224 --batch-size 256 \
        --precision bf16 --channels-last --compile both --n-images 20000 --out train.json
CPU smoke test (seconds):
    python bench/gpu_train_throughput.py --device cpu --backbone cxr-small-cnn --size 32 \
        --batch-size 8 --n-images 64 --steps 3 --warmup 1 --workers 1 --precision fp32 \
        --phantom-size 64 --unique 16

Data: --unique phantom radiographs (cxr.synth) of --phantom-size px (default 1024, the
side of the NIH originals, so that the naive loader decodes what a user's loader would),
each listed --n-images / --unique times, then a cxr cache of them at --size px
(cxr.cache.prepare). Both stay under --work-dir and are reused by the next run.

Measured, each as --steps timed optimiser steps after --warmup untimed ones, with the
same model (cxr.models.build_model), loss, AdamW, precision, channels-last and compile
(torch.cuda.synchronize() before and after the timed steps):
  ceiling          one synthetic batch already on the device, forward+backward+step;
  cxr (augment ..) the real training path: CacheBatches (pinned, read-ahead thread) feeding
                   cxr.training.Engine.train_epoch as cxr.training.loop does (phase 2: all
                   layers trained), without validation; with and without the default
                   on-device augmentation (--augment);
  naive            a torch Dataset opening each PNG with Pillow (gray, resize to --size,
                   float tensor) in a DataLoader of --workers processes, then the ceiling's
                   step (no augmentation, which favours it).
Prints a settings table and a Markdown results table (images/s, ratio to the ceiling of the
same compile mode, target >= 0.90) and the cache's speed-up over naive; writes it as JSON.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import machine, markdown, write_json  # bench/ is on sys.path as a script
from cxr.cache import PreparedCache, prepare
from cxr.cache.batches import CacheBatches
from cxr.losses import build_loss
from cxr.models import ModelSpec, Preprocessing, build_model, parameter_groups
from cxr.synth import SynthConfig, generate_phantoms, table_from_dir
from cxr.table import LabelTable
from cxr.training import distributed as dd
from cxr.training.callbacks import FunctionCallback
from cxr.training.config import AugmentConfig, TrainConfig
from cxr.training.engine import Engine

TARGET = 0.90
Batch = tuple[torch.Tensor, torch.Tensor]


# shared with gpu_inference_throughput.py -------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def phantom_cache(
    work: Path, n_images: int, unique: int, phantom_size: int, size: int, workers: int
) -> tuple[LabelTable, PreparedCache]:
    """n_images table rows over ``unique`` phantom files, and their cache at ``size`` px."""
    unique = min(unique, n_images) if unique > 0 else n_images
    config = SynthConfig(n_images=unique, size=phantom_size, seed=0)
    folder = work / f"phantoms-{phantom_size}px-{unique}"
    record = folder / "synth.json"
    wanted = {**asdict(config), "labels": list(config.labels)}
    if record.is_file() and json.loads(record.read_text()).get("config") == wanted:
        print(f"reusing {unique} phantoms in {folder}", flush=True)
        base = table_from_dir(folder)
    else:
        print(f"generating {unique} phantoms of {phantom_size} px in {folder} ...", flush=True)
        start = time.perf_counter()
        base = generate_phantoms(folder, config, workers=workers)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    rows = np.arange(n_images) % len(base)
    table = LabelTable.from_columns(
        [base.paths[i] for i in rows],
        [f"r{i:06d}" for i in range(n_images)],
        base.labels[rows],
        base.pathologies,
    )
    cache_dir = work / f"cache-{size}px-{n_images}-of-{folder.name}"
    print(f"preparing the cache {cache_dir} (nothing to do when it is complete) ...", flush=True)
    start = time.perf_counter()
    summary = prepare(table, cache_dir, size, workers=workers, progress=False, overwrite=True)
    print(f"  {time.perf_counter() - start:.0f} s, {summary.stored} images stored", flush=True)
    return table, PreparedCache(cache_dir)


def args_phantom_cache(args: argparse.Namespace) -> tuple[LabelTable, PreparedCache]:
    """:func:`phantom_cache` with the settings of :func:`base_parser`'s options."""
    return phantom_cache(
        args.work_dir,
        args.n_images,
        args.unique,
        args.phantom_size,
        args.size,
        args.prepare_workers,
    )


def timed_rate(
    step: Callable[[torch.Tensor, torch.Tensor], None],
    batches: Iterator[Batch],
    batch_size: int,
    warmup: int,
    steps: int,
    device: torch.device,
) -> float:
    """images/s of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def base_settings(args: argparse.Namespace) -> dict:
    """The settings of :func:`base_parser` both GPU benchmarks record in their JSON."""
    return {
        "backbone": args.backbone,
        "size": args.size,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }


def print_report(m: dict, args: argparse.Namespace, cudnn: tuple[str, str], results: list) -> None:
    """The Markdown settings table (``cudnn``: its column name and value) and the results
    table (compile mode, measure, images/s and the ratio to the ceiling) of a GPU benchmark."""
    header = ["machine", "torch", "cxr", "backbone", "size", "batch", "precision"]
    row = [m["machine"], m["torch"], m["cxr"], args.backbone, str(args.size)]
    row += [str(args.batch_size), args.precision, str(args.channels_last).lower(), cudnn[1]]
    print("\n" + markdown([*header, "channels-last", cudnn[0]], [row]) + "\n")
    rows = [
        [r["compile"], r["measure"], f"{r['images_per_second']:.1f}", _ratio(r)] for r in results
    ]
    print(markdown(["compile", "measure", "images/s", "/ ceiling"], rows) + "\n")


def write_result(
    args: argparse.Namespace,
    benchmark: str,
    m: dict,
    settings: dict,
    results: list,
    speedups: dict | None = None,
) -> None:
    """Write the JSON result of a GPU benchmark to --out (default: WORK_DIR/BENCHMARK.json)."""
    data = {"benchmark": benchmark, "machine": m, "settings": settings, "results": results}
    if speedups is not None:
        data["cache_speedup_over_naive"] = speedups
    write_json(args.out or args.work_dir / f"{benchmark}.json", {**data, "target": TARGET})


def _ratio(result: dict) -> str:
    ratio = result["ratio_to_ceiling"]
    return "-" if ratio is None else f"{ratio:.3f}"


# the three measurements --------------------------------------------------------------------
class Step:
    """The optimiser step of the model a TrainConfig describes, on given device tensors."""

    def __init__(
        self,
        config: TrainConfig,
        names: tuple[str, ...],
        size: int,
        train_labels: np.ndarray,
        device: torch.device,
    ):
        spec = ModelSpec(
            labels=tuple(names), backbone=config.backbone, preprocessing=Preprocessing(size=size)
        )
        self.model = build_model(spec).to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.loss_fn = build_loss(config.loss, train_labels).to(device)
        lr = config.phase2_lr
        self.opt = torch.optim.AdamW(
            parameter_groups(self.model, lr, lr * config.head_lr_factor),
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.device = device

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.forward(x)
        loss = self.loss_fn(logits.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)


def ceiling_rate(
    config: TrainConfig, cache: PreparedCache, device: torch.device, warmup: int, steps: int
) -> float:
    step = Step(config, cache.table.pathologies, cache.size, cache.table.labels, device)
    b, s, n_labels = config.batch_size, cache.size, len(cache.table.pathologies)
    x = torch.rand(b, 1, s, s, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
    y = (torch.rand(b, n_labels, device=device) < 0.3).float()
    return timed_rate(step, itertools.repeat((x, y)), b, warmup, steps, device)


class _Done(Exception):
    pass


def cxr_rate(
    config: TrainConfig, cache: PreparedCache, info: dd.Dist, warmup: int, steps: int
) -> float:
    """Steady-state images/s of Engine.train_epoch over CacheBatches, built as loop._run does."""
    torch.manual_seed(config.seed)
    batches = CacheBatches(
        cache,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
        pin_memory=info.device.type == "cuda",
        prefetch=2 * config.loader_threads,
    )
    per_epoch = len(batches)
    if per_epoch == 0:
        raise SystemExit(f"--n-images {len(cache)} is less than one batch")
    config = replace(
        config, phase1_epochs=0, phase2_epochs=math.ceil((warmup + steps) / per_epoch) + 1
    )
    engine = Engine(
        config,
        cache.table.pathologies,
        Preprocessing(size=cache.size, fit=cache.fit),
        cache.table.labels,
        info,
        steps_per_epoch=math.ceil(per_epoch / config.accumulate),
    )
    engine.enter_phase(2)
    seen, marks = 0, []

    def timer(event: str, _: dict) -> None:
        nonlocal seen
        if event != "step":
            return
        seen += 1
        if seen in (warmup, warmup + steps):
            sync(info.device)
            marks.append(time.perf_counter())
        if seen == warmup + steps:
            raise _Done

    if warmup == 0:
        marks.append(time.perf_counter())
    for epoch in itertools.count():
        batches.set_epoch(epoch)
        try:
            engine.train_epoch(batches, epoch, False, [FunctionCallback(timer)])
        except _Done:
            break
    return steps * config.batch_size / (marks[1] - marks[0])


class PngDataset(torch.utils.data.Dataset):
    """The naive loader: Pillow decode, gray, resize, float tensor (1, S, S) in [0, 1]."""

    def __init__(self, paths: list[str], labels: np.ndarray, size: int):
        self.paths, self.labels, self.size = paths, labels.astype(np.float32), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Batch:
        with Image.open(self.paths[i]) as im:
            gray = im.convert("L").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0).unsqueeze(0)
        return x, torch.from_numpy(self.labels[i])


def naive_rate(
    config: TrainConfig,
    table: LabelTable,
    size: int,
    device: torch.device,
    workers: int,
    warmup: int,
    steps: int,
) -> float:
    step = Step(config, table.pathologies, size, table.labels, device)
    loader = torch.utils.data.DataLoader(
        PngDataset(table.paths, table.labels, size),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    if len(loader) == 0:
        raise SystemExit(f"--n-images {len(table)} is less than one batch")
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format

    def batches() -> Iterator[Batch]:
        while True:
            for x, y in loader:
                yield (
                    x.to(device, non_blocking=True).contiguous(memory_format=fmt),
                    y.to(device, non_blocking=True),
                )

    return timed_rate(step, batches(), config.batch_size, warmup, steps, device)


# main ---------------------------------------------------------------------------------------
def base_parser(doc: str, counts: tuple[tuple[str, int], ...] = ()) -> argparse.ArgumentParser:
    """The options both GPU benchmarks take (model, sizes, precision, data, output);
    ``counts`` adds integer options of one script."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbone", default="densenet121")
    for flag, default in (
        ("--size", 224),
        ("--batch-size", 256),
        ("--n-images", 20000),
        ("--phantom-size", 1024),
        ("--steps", 50),
        ("--warmup", 10),
        *counts,
    ):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--compile", nargs="?", const="on", default="off", choices=("off", "on", "both")
    )
    ap.add_argument("--unique", type=int, default=1000, help="distinct phantoms (0 = all)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prepare-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/cxr-bench"))
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default WORK_DIR/...)")
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = base_parser(__doc__)
    ap.add_argument(
        "--augment",
        choices=("on", "off", "both"),
        default="both",
        help="the cxr pipeline with cxr's default augmentation, without, or both",
    )
    ap.add_argument(
        "--deterministic",
        action="store_true",
        help="cuDNN deterministic (TrainConfig's default) instead of cudnn.benchmark",
    )
    ap.add_argument("--loader-threads", type=int, default=1, help="TrainConfig.loader_threads")
    ap.add_argument("--workers", type=int, default=16, help="naive DataLoader processes")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    info = dd.setup(args.device)
    torch.backends.cudnn.deterministic = args.deterministic
    torch.backends.cudnn.benchmark = not args.deterministic
    table, cache = args_phantom_cache(args)
    base = TrainConfig(
        backbone=args.backbone,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        device=args.device,
        loader_threads=args.loader_threads,
        deterministic=args.deterministic,
    )
    results: list[dict] = []
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        config, mode = base.replace(compile=compiled), "compiled" if compiled else "eager"
        runs: list[tuple[str, Callable[[], float]]] = [
            (
                "ceiling",
                lambda c=config: ceiling_rate(c, cache, info.device, args.warmup, args.steps),
            )
        ]
        for aug in {"on": [True], "off": [False], "both": [True, False]}[args.augment]:
            c = config.replace(augment=AugmentConfig(enabled=aug))
            runs.append(
                (
                    f"cxr (augment {'on' if aug else 'off'})",
                    lambda c=c: cxr_rate(c, cache, info, args.warmup, args.steps),
                )
            )
        runs.append(
            (
                f"naive ({args.workers} workers)",
                lambda c=config: naive_rate(
                    c, table, args.size, info.device, args.workers, args.warmup, args.steps
                ),
            )
        )
        ceiling = float("nan")
        for name, run in runs:  # the ceiling first
            print(f"{mode}: {name} ...", flush=True)
            rate = run()
            free_memory()
            ceiling = rate if name == "ceiling" else ceiling
            results.append(
                {
                    "compile": mode,
                    "measure": name,
                    "images_per_second": rate,
                    "ratio_to_ceiling": rate / ceiling,
                }
            )
            print(f"  {rate:.1f} img/s ({rate / ceiling:.3f} of the ceiling)", flush=True)
    report(args, machine(info.device), results)


def report(args: argparse.Namespace, m: dict, results: list[dict]) -> None:
    cudnn = "deterministic" if args.deterministic else "benchmark"
    settings = {
        **base_settings(args),
        "cudnn": cudnn,
        "loader_threads": args.loader_threads,
        "n_images": args.n_images,
        "unique_files": min(args.unique or args.n_images, args.n_images),
        "phantom_size": args.phantom_size,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print_report(m, args, ("cuDNN", cudnn), results)
    speedups = {}
    for r in results:
        if r["measure"].startswith("cxr"):
            naive = next(
                n
                for n in results
                if n["compile"] == r["compile"] and n["measure"].startswith("naive")
            )
            key = f"{r['compile']}: {r['measure']}"
            speedups[key] = r["images_per_second"] / naive["images_per_second"]
            met = "met" if r["ratio_to_ceiling"] >= TARGET else "NOT met"
            print(
                f"{key}: {r['ratio_to_ceiling']:.3f} of the ceiling (target >= {TARGET:.2f}: "
                f"{met}); cache speed-up over naive {speedups[key]:.2f}x"
            )
    write_result(args, "gpu_train_throughput", m, settings, results, speedups)


if __name__ == "__main__":
    main()
