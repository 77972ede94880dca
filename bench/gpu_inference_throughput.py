"""Inference images/s of cxr.inference.Predictor.predict_cache against the model-only
ceiling (issue 6).

Usage (from the repository root; the full settings are for an H100):
    python bench/gpu_inference_throughput.py --backbone densenet121 --size 224 \
        --batch-size 256 --precision bf16 --channels-last --compile both --n-images 20000 \
        --out infer.json
CPU smoke test (seconds):
    python bench/gpu_inference_throughput.py --device cpu --backbone cxr-small-cnn --size 32 \
        --batch-size 8 --n-images 64 --steps 3 --warmup 1 --precision fp32 \
        --phantom-size 64 --unique 16

Data: the phantom cache of bench/gpu_train_throughput.py (same --work-dir, --n-images,
--unique, --phantom-size and --size reuse it). A randomly initialised model of --backbone
is saved with cxr.modelfile.save_model and loaded back by each measurement.

Measured (torch.cuda.synchronize() around every timed part):
  ceiling        one synthetic batch already on the device, eval mode, inference_mode,
                 autocast to --precision, channels-last and compile as asked; --steps timed
                 forward passes + sigmoid after --warmup untimed ones;
  cxr as is      Predictor(model_file, device, batch_size, precision, channels_last)
                 .predict_cache(cache) over the whole cache, exactly as cxr runs it (it
                 never compiles, so one measurement serves both compile modes); the best
                 of --repeats passes;
  cxr + compile  the same call with predictor.model replaced by torch.compile(model):
                 what a compile option in predict.py would reach;
  cache read     PreparedCache.read of every batch, no model: the serial host-side part.
Prints a Markdown settings table and results table (images/s, ratio to the ceiling of the
same compile mode, target >= 0.90) and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from _common import machine  # bench/ is on sys.path when run as a script
from cxr.cache import PreparedCache
from cxr.devices import resolve_device
from cxr.inference import Predictor
from cxr.modelfile import load_model, save_model
from cxr.models import ModelSpec, Preprocessing, build_model
from gpu_train_throughput import (
    TARGET,
    args_phantom_cache,
    base_parser,
    base_settings,
    free_memory,
    print_report,
    sync,
    timed_rate,
    write_result,
)

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = AMP.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def ceiling_rate(
    args: argparse.Namespace, model_file: Path, device: torch.device, compiled: bool
) -> float:
    model = load_model(model_file, device=device).model.eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    x = torch.rand(args.batch_size, 1, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x

    def step(x: torch.Tensor, _: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(device, args.precision):
            torch.sigmoid(forward(x).float())

    return timed_rate(
        step, itertools.repeat((x, x)), args.batch_size, args.warmup, args.steps, device
    )


def predictor_rate(
    args: argparse.Namespace,
    model_file: Path,
    cache: PreparedCache,
    device: torch.device,
    outside: bool,
    compiled: bool,
) -> float:
    """Best images/s of --repeats whole predict_cache passes; ``outside`` and ``compiled``
    replace predictor.model by its torch.compile'd self."""
    predictor = Predictor(
        model_file,
        device=str(device),
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    if outside and compiled:
        predictor.model = torch.compile(predictor.model)
    n, b = len(cache), args.batch_size
    best = 0.0
    with nullcontext():
        for size in [min(b, n)] * args.warmup + ([n % b] if n % b else []):  # incl. last batch
            predictor.predict_arrays(cache.read(np.arange(size)))
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            probs = predictor.predict_cache(cache)
            sync(device)
            best = max(best, n / (time.perf_counter() - start))
    if probs.shape != (n, len(predictor.labels)) or not np.isfinite(probs).all():
        raise SystemExit(f"predict_cache gave {probs.shape} probabilities, some not finite")
    return best


def read_rate(cache: PreparedCache, batch_size: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(cache), batch_size):
        cache.read(np.arange(first, min(first + batch_size, len(cache))))
    return len(cache) / (time.perf_counter() - start)


def measure(
    results: list[dict], mode: str, name: str, ceiling: float, run: Callable[[], float]
) -> float:
    """Run one measurement, print it and add it to ``results`` (the ceiling: ratio 1)."""
    print(f"{mode}: {name} ...", flush=True)
    rate = run()
    free_memory()
    ratio = 1.0 if name == "ceiling" else rate / ceiling
    results.append(
        {"compile": mode, "measure": name, "images_per_second": rate, "ratio_to_ceiling": ratio}
    )
    print(f"  {rate:.1f} img/s ({ratio:.3f} of the ceiling)", flush=True)
    return rate


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = base_parser(__doc__, counts=(("--repeats", 2),))
    ap.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.backends.cudnn.benchmark for every measurement (cxr's "
        "predict path leaves it at torch's default, off)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    _, cache = args_phantom_cache(args)
    model_file = args.work_dir / f"model-{args.backbone}-{args.size}px.safetensors"
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=tuple(cache.table.pathologies),
        backbone=args.backbone,
        preprocessing=Preprocessing(size=args.size),
    )
    save_model(model_file, build_model(spec), training={"fit": cache.fit})
    print("cache read only ...", flush=True)
    results = [
        {
            "compile": "-",
            "measure": "cache read only (no model)",
            "images_per_second": read_rate(cache, args.batch_size),
            "ratio_to_ceiling": None,
        }
    ]
    print(f"  {results[0]['images_per_second']:.1f} img/s", flush=True)
    as_is: float | None = None
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        mode = "compiled" if compiled else "eager"
        outside = "compile" if compiled else "nothing"
        ceiling = measure(
            results,
            mode,
            "ceiling",
            float("nan"),
            lambda c=compiled: ceiling_rate(args, model_file, device, c),
        )
        if as_is is None:
            as_is = measure(
                results,
                mode,
                "cxr Predictor.predict_cache as is",
                ceiling,
                lambda: predictor_rate(args, model_file, cache, device, False, False),
            )
        else:
            measure(
                results,
                mode,
                "cxr Predictor.predict_cache as is (same measurement)",
                ceiling,
                lambda r=as_is: r,
            )
        measure(
            results,
            mode,
            f"cxr Predictor.predict_cache + {outside} from outside",
            ceiling,
            lambda c=compiled: predictor_rate(args, model_file, cache, device, True, c),
        )
    m = machine(device)
    settings = {
        **base_settings(args),
        "cudnn_benchmark": args.cudnn_benchmark,
        "n_images": len(cache),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    print_report(m, args, ("cudnn.benchmark", str(args.cudnn_benchmark).lower()), results)
    for r in results:
        if r["measure"].startswith("cxr"):
            met = "met" if r["ratio_to_ceiling"] >= TARGET else "NOT met"
            print(
                f"{r['compile']}: {r['measure']}: {r['ratio_to_ceiling']:.3f} of the ceiling "
                f"(target >= {TARGET:.2f}: {met})"
            )
    write_result(args, "gpu_inference_throughput", m, settings, results)


if __name__ == "__main__":
    main()
