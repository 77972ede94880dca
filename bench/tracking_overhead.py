"""What MLflow tracking (`cxr train --mlflow`) costs per epoch (issue 14).

Usage (from the repository root; the defaults take a few minutes on an idle 2-core CPU):
    python bench/tracking_overhead.py
    python bench/tracking_overhead.py --backbone cxr-small-cnn --size 64 --images 400 \
        --epochs 3 --repeats 3 --json tracking_overhead.json
Quick smoke test (under a minute):
    python bench/tracking_overhead.py --images 120 --epochs 1 --repeats 1 --batch-size 16

Data: --images phantom radiographs (cxr.synth) split by patient (80/10/10) and prepared at
--size px under --work-dir (reused when present; default: a temporary folder).

The same run (--backbone, phase 1 = 0 epochs, phase 2 = --epochs epochs, --batch-size, CPU
or --device) is trained in this process without and with
:class:`cxr.tracking.MLflowCallback`, alternating (plain, tracked, plain, tracked, ...)
--repeats times after one untimed warm-up run. Tracking logs into a local SQLite store in a
temporary folder, created (schema migrations) before the first timed run, as a user's
existing ``mlflow.db`` would be. Reported:

- callback: seconds spent inside the callback's own methods, timed directly by wrapping it:
  ``on_start`` (run, params, tags; the first one also imports MLflow, reported apart),
  ``on_epoch`` (one log_batch per epoch) and ``on_end`` (config, history and the best model
  copied into the artifact store); per epoch = their sum / epochs. This is the precise figure.
- wall: seconds per epoch of the whole ``train()`` call, median over the repeats, and the
  difference tracked - plain (noisy: the training time varies more than the tracking costs).

Prints a Markdown table (and writes --json when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cxr.training.callbacks import RunStart, TrainingCallback


class Timed(TrainingCallback):
    """Passes every event to ``inner`` and adds up the seconds each kind takes."""

    def __init__(self, inner: TrainingCallback) -> None:
        self.inner = inner
        self.seconds = {"start": 0.0, "epoch": 0.0, "end": 0.0}
        self.epochs = 0

    def _timed(self, kind: str, fn: Any, arg: Any) -> None:
        t0 = time.perf_counter()
        fn(arg)
        self.seconds[kind] += time.perf_counter() - t0

    def on_start(self, run: RunStart) -> None:
        self._timed("start", self.inner.on_start, run)

    def on_step(self, step: dict[str, int]) -> None:
        self.inner.on_step(step)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.epochs += 1
        self._timed("epoch", self.inner.on_epoch, row)

    def on_end(self, result: Any) -> None:
        self._timed("end", self.inner.on_end, result)

    def on_error(self, error: BaseException) -> None:
        self.inner.on_error(error)


def caches(work: Path, images: int, size: int) -> dict[str, Path]:
    """Phantoms split by patient and prepared at ``size`` (reused when present)."""
    out = {name: work / "cache" / name for name in ("train", "val")}
    if all((p / "manifest.json").is_file() for p in out.values()):
        return out
    from cxr.cache import prepare
    from cxr.split import split_by_patient, split_tables
    from cxr.synth import SynthConfig, generate_phantoms

    table = generate_phantoms(
        work / "phantoms", SynthConfig(n_images=images, size=size * 2, seed=0), workers=1
    )
    parts = split_tables(table, split_by_patient(table, seed=0))
    for name in ("train", "val"):
        prepare(parts[name], out[name], size, workers=1, progress=False)
    return out


def import_seconds() -> float:
    """Seconds to import MLflow's client in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import mlflow.tracking; "
    code += "print(time.perf_counter() - t)"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}  # as cxr.tracking.mlflow does
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(done.stdout.strip())


def one_run(args: argparse.Namespace, data: dict[str, Path], run_dir: Path, store: str | None):
    """Train once; returns (wall seconds, epochs, the Timed wrapper or None)."""
    from cxr.tracking import MLflowCallback
    from cxr.training import TrainConfig, train

    config = TrainConfig(
        backbone=args.backbone,
        phase1_epochs=0,
        phase2_epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        seed=0,
    )
    timed = None if store is None else Timed(MLflowCallback(store, experiment="overhead"))
    t0 = time.perf_counter()
    result = train(
        config,
        data["train"],
        data["val"],
        run_dir,
        overwrite=True,
        progress=False,
        echo=lambda s: None,
        callbacks=[timed] if timed else [],
    )
    return time.perf_counter() - t0, result.epochs_run, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="cxr-small-cnn")
    ap.add_argument("--size", type=int, default=64, help="image side in px (default: 64)")
    ap.add_argument("--images", type=int, default=400, help="phantoms in all (default: 400)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per arm (default: 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work-dir", type=Path, help="keeps the prepared phantoms between runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxr-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        data = caches(args.work_dir or tmp / "data", args.images, args.size)
        from cxr.tracking import end_run, start_run

        first_import = import_seconds()
        store = f"sqlite:///{(tmp / 'store' / 'mlflow.db').as_posix()}"
        (tmp / "store").mkdir()
        end_run(store, start_run(store, "overhead", "create-store"))  # schema, imports
        one_run(args, data, tmp / "warmup", None)  # untimed: kernels, caches, page cache
        load_before = os.getloadavg()[0]
        plain: list[float] = []
        tracked: list[float] = []
        parts: list[dict[str, float]] = []
        for i in range(args.repeats):
            wall, epochs, _ = one_run(args, data, tmp / f"plain{i}", None)
            plain.append(wall / epochs)
            wall, epochs, timed = one_run(args, data, tmp / f"tracked{i}", store)
            assert timed is not None
            tracked.append(wall / epochs)
            parts.append({**timed.seconds, "epochs": float(timed.epochs)})
        load_after = os.getloadavg()[0]

    def median(key: str) -> float:
        return statistics.median(p[key] for p in parts)

    per_epoch = statistics.median((p["start"] + p["epoch"] + p["end"]) / p["epochs"] for p in parts)
    import mlflow
    import torch

    from cxr import __version__

    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": {
            "python": platform.python_version(),
            "cxr": __version__,
            "mlflow": mlflow.__version__,
            "torch": torch.__version__,
        },
        "load_1min": [load_before, load_after],
        "mlflow_import_seconds": first_import,
        "callback_seconds_per_epoch": per_epoch,
        "on_start_seconds": median("start"),
        "on_epoch_seconds": median("epoch") / args.epochs,
        "on_end_seconds": median("end"),
        "wall_seconds_per_epoch": {
            "plain": statistics.median(plain),
            "tracked": statistics.median(tracked),
        },
        "repeats": {"plain": plain, "tracked": tracked, "callback": parts},
    }
    wall_plain, wall_tracked = statistics.median(plain), statistics.median(tracked)
    print(
        f"{args.backbone}, {args.size} px, {len(parts)} x 2 runs of {args.epochs} epochs, "
        f"batch {args.batch_size}, {args.device}; mlflow {mlflow.__version__}, cxr "
        f"{__version__}; 1-min load {load_before:.2f} -> {load_after:.2f}\n"
    )
    print("| measure | seconds |")
    print("|---|---|")
    print(f"| import of the MLflow client (once per process) | {first_import:.2f} |")
    print(f"| callback `on_start` (run, params, tags) | {results['on_start_seconds']:.3f} |")
    print(f"| callback `on_epoch` (per epoch) | {results['on_epoch_seconds']:.4f} |")
    print(f"| callback `on_end` (artifacts incl. the model) | {results['on_end_seconds']:.3f} |")
    print(f"| **callback time per epoch** (sum / epochs) | **{per_epoch:.4f}** |")
    print(f"| wall per epoch, plain (median) | {wall_plain:.2f} |")
    print(f"| wall per epoch, tracked (median) | {wall_tracked:.2f} |")
    print(f"| wall difference per epoch (tracked - plain) | {wall_tracked - wall_plain:+.3f} |")
    print(f"\ncallback time per epoch = {100 * per_epoch / wall_plain:.2f}% of a plain epoch")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
