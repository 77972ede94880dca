"""Steady-state training and validation images/s of `cxr train` against a plain PyTorch loop
(issue 16), one process per measurement.

Usage (from the repository root; the defaults are the issue's settings, about 30 min on an idle
2-core CPU):
    python bench/train_throughput.py --out train_throughput.json
Quick smoke test (a minute):
    python bench/train_throughput.py --backbones cxr-small-cnn --size 64 --batch-size 8 \
        --warmup 1 --steps 3 --repeats 1 --val-images 32 --val-batch-size 16

Data: --unique phantom radiographs (cxr.synth) listed over and over as a training cache of
50 * --batch-size + 1 images at --size px (at least 50 steps per epoch) and a validation
cache of --val-images, prepared with cxr.cache.prepare under --work-dir (reused).

Rows, for every backbone of --backbones: training with the backbone frozen (phase 1),
training with everything trained (phase 2), and validation/prediction. Columns:
  cxr      training: ``cxr.training.train`` on the caches with the default TrainConfig
           except backbone, batch size, precision and the phase (one epoch); the steps are
           timed through the ``step`` callback events and the run stops after --warmup +
           --steps steps. Prediction: ``Engine.predict`` over the validation cache (what
           every epoch's validation runs), one untimed pass, then --steps-predict passes.
  plain    the same model (cxr.models.build_model), batch size, precision and memory format
           in a plain loop over one synthetic batch held in memory: BCEWithLogitsLoss,
           AdamW, ``requires_grad_(False)`` and ``eval()`` on the frozen backbone; for
           prediction ``torch.inference_mode`` over as many images as the validation cache.
  before   cxr with the defaults before issue 16 (channels-last off), when --before.
Each figure is images/s after --warmup steps (warm-up reported separately, in seconds:
from the run's start event to the end of the warm-up steps); each measurement is a fresh
process; cxr and plain alternate (A B A B ...) --repeats times and the median is reported.
The machine load (os.getloadavg) is recorded before and after: figures taken with a
1-minute load above 1.5 on a 2-core machine are provisional.

These are steps inside the loop; a whole epoch as a user runs it (`cxr train`, history.csv's
figure and wall time, against a plain loop over the same images) is bench/train_epoch.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 0.90


# one measurement (a child process) -------------------------------------------------------
class _Done(Exception):
    """Raised by the timing callback once enough steps were timed."""


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cxr_train(m: dict) -> dict:
    import torch

    from cxr.training import TrainConfig, train
    from cxr.training import distributed as dd

    device = dd.setup(m["device"]).device
    changes = dict(m["config"])
    frozen = m["frozen"]
    config = TrainConfig(
        backbone=m["backbone"],
        batch_size=m["batch_size"],
        precision=m["precision"],
        device=m["device"],
        phase1_epochs=1 if frozen else 0,
        phase2_epochs=0 if frozen else 1,
        **changes,
    )
    marks: list[float] = []
    wanted = m["warmup"] + m["steps"]

    def timer(event: str, info) -> None:
        if event == "start":
            marks.append(time.perf_counter())
        elif event == "step":
            if len(marks) in (m["warmup"], wanted):  # the ends of the warm-up and the timing
                _sync(device)
            marks.append(time.perf_counter())
            if len(marks) > wanted:
                raise _Done

    with contextlib.suppress(_Done):
        train(
            config,
            m["train_cache"],
            m["val_cache"],
            Path(m["run_dir"]),
            overwrite=True,
            progress=False,
            echo=lambda s: None,
            callbacks=[timer],
        )
    steps = len(marks) - 1 - m["warmup"]
    return {
        "images_per_second": steps * m["batch_size"] / (marks[-1] - marks[m["warmup"]]),
        "warmup_seconds": marks[m["warmup"]] - marks[0],
        "threads": torch.get_num_threads(),
        "channels_last": config.channels_last,
    }


def _plain_model(m: dict, names: tuple[str, ...], device, channels_last: bool):
    import torch

    from cxr.models import ModelSpec, Preprocessing, build_model

    torch.manual_seed(0)
    spec = ModelSpec(
        labels=names, backbone=m["backbone"], preprocessing=Preprocessing(size=m["size"])
    )
    model = build_model(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _amp(m: dict, device):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(m["precision"])
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _plain_train(m: dict) -> dict:
    import torch

    from cxr.cache import PreparedCache
    from cxr.training import TrainConfig
    from cxr.training import distributed as dd

    device = dd.setup(m["device"]).device
    channels_last = TrainConfig(**m["config"]).channels_last
    names = tuple(PreparedCache(m["train_cache"]).table.pathologies)
    start = time.perf_counter()
    model = _plain_model(m, names, device, channels_last)
    model.train()
    if m["frozen"]:
        model.backbone.requires_grad_(False)
        model.backbone.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=m["precision"] == "fp16")
    b, s = m["batch_size"], m["size"]
    x = torch.rand(b, 1, s, s, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (b, len(names)), device=device).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        with _amp(m, device):
            logits = model(x)
        scaler.scale(loss_fn(logits.float(), y)).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(m["warmup"]):
        step()
    _sync(device)
    warm = time.perf_counter()
    for _ in range(m["steps"]):
        step()
    _sync(device)
    return {
        "images_per_second": m["steps"] * b / (time.perf_counter() - warm),
        "warmup_seconds": warm - start,
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
    }


def _cxr_predict(m: dict) -> dict:
    import torch

    from cxr.cache import PreparedCache
    from cxr.cache.batches import CacheBatches
    from cxr.preprocessing import Preprocessing
    from cxr.training import TrainConfig
    from cxr.training import distributed as dd
    from cxr.training.engine import Engine

    info = dd.setup(m["device"])
    config = TrainConfig(
        backbone=m["backbone"],
        precision=m["precision"],
        val_batch_size=m["val_batch_size"],
        device=m["device"],
        **m["config"],
    )
    start = time.perf_counter()
    cache = PreparedCache(m["val_cache"])
    batches = CacheBatches(
        cache, config.val_batch_size, shuffle=False, pin_memory=info.device.type == "cuda"
    )
    torch.manual_seed(0)
    engine = Engine(
        config,
        cache.table.pathologies,
        Preprocessing(size=cache.size, fit=cache.fit),
        cache.table.labels,
        info,
        steps_per_epoch=1,
    )
    engine.predict(batches)  # warm-up pass
    warm = time.perf_counter()
    for _ in range(m["steps_predict"]):
        engine.predict(batches)
    return {
        "images_per_second": m["steps_predict"] * len(cache) / (time.perf_counter() - warm),
        "warmup_seconds": warm - start,
        "threads": torch.get_num_threads(),
        "channels_last": config.channels_last,
    }


def _plain_predict(m: dict) -> dict:
    import torch

    from cxr.cache import PreparedCache
    from cxr.training import TrainConfig
    from cxr.training import distributed as dd

    device = dd.setup(m["device"]).device
    channels_last = TrainConfig(**m["config"]).channels_last
    cache = PreparedCache(m["val_cache"])
    start = time.perf_counter()
    model = _plain_model(m, tuple(cache.table.pathologies), device, channels_last).eval()
    n, b, s = len(cache), m["val_batch_size"], m["size"]
    x = torch.rand(b, 1, s, s, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def one_pass() -> None:
        outs = []
        with torch.inference_mode(), _amp(m, device):
            for i in range(0, n, b):
                outs.append(model(x[: min(b, n - i)]).float())
        torch.cat(outs).cpu()

    one_pass()
    _sync(device)
    warm = time.perf_counter()
    for _ in range(m["steps_predict"]):
        one_pass()
    return {
        "images_per_second": m["steps_predict"] * n / (time.perf_counter() - warm),
        "warmup_seconds": warm - start,
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
    }


MEASURE = {
    ("train", "cxr"): _cxr_train,
    ("train", "plain"): _plain_train,
    ("predict", "cxr"): _cxr_predict,
    ("predict", "plain"): _plain_predict,
}


def child(spec: str) -> None:
    m = json.loads(spec)
    out = MEASURE[(m["kind"], m["side"])](m)
    print("RESULT " + json.dumps(out), flush=True)


# the run ---------------------------------------------------------------------------------
def measure(m: dict) -> dict:
    """One measurement in a fresh process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(m)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"measurement {m} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--backbones", default="efficientnet-lite0,densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-batch-size", type=int, default=128)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per measurement")
    p.add_argument("--steps-predict", type=int, default=1, help="timed validation passes")
    p.add_argument("--repeats", type=int, default=2, help="cxr/plain pairs per row (A B A B)")
    p.add_argument(
        "--before",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time cxr with the defaults before issue 16 (channels-last off)",
    )
    p.add_argument("--rows", default="frozen,unfrozen,predict")
    p.add_argument("--unique", type=int, default=32, help="distinct phantoms in the caches")
    p.add_argument("--phantom-size", type=int, default=256)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cxr-train-throughput"))
    p.add_argument("--out", type=Path, help="write the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        child(args.child)
        return
    sys.path.insert(0, str(HERE))
    from _common import cpu_model
    from gpu_train_throughput import phantom_cache

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    n_train = 50 * args.batch_size + 1
    _, train_c = phantom_cache(
        work, n_train, args.unique, args.phantom_size, args.size, os.cpu_count() or 1
    )
    _, val_c = phantom_cache(
        work, args.val_images, args.unique, args.phantom_size, args.size, os.cpu_count() or 1
    )
    load_before = os.getloadavg()
    base = {
        "size": args.size,
        "batch_size": args.batch_size,
        "val_batch_size": args.val_batch_size,
        "precision": args.precision,
        "device": args.device,
        "warmup": args.warmup,
        "steps": args.steps,
        "steps_predict": args.steps_predict,
        "train_cache": str(train_c.path),
        "val_cache": str(val_c.path),
        "run_dir": str(work / "run"),
        "config": {},
    }
    results = []
    started = time.perf_counter()
    for backbone in args.backbones.split(","):
        for row in args.rows.split(","):
            kind = "predict" if row == "predict" else "train"
            m = dict(base, backbone=backbone, kind=kind, frozen=row == "frozen")
            runs: dict[str, list[dict]] = {"cxr": [], "plain": [], "before": []}
            for _ in range(args.repeats):
                for side in ("cxr", "plain"):
                    runs[side].append(measure(dict(m, side=side)))
                    print(f"{backbone} {row} {side}: {runs[side][-1]}", flush=True)
            if args.before:
                old = dict(m, side="cxr", config={"channels_last": False})
                runs["before"].append(measure(old))
                print(f"{backbone} {row} before: {runs['before'][-1]}", flush=True)
            results.append({"backbone": backbone, "row": row, "runs": runs})
    load_after = os.getloadavg()
    import torch

    info = {
        "machine": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": results[0]["runs"]["cxr"][0]["threads"] if results else None,
        "load_before": load_before,
        "load_after": load_after,
        "minutes": (time.perf_counter() - started) / 60,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
    }
    print(report(results, info))
    if args.out:
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=2, default=str))


def _median(runs: list[dict], key: str = "images_per_second") -> float:
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def report(results: list[dict], info: dict) -> str:
    s = info["settings"]
    load = max(info["load_before"][0], info["load_after"][0])
    lines = [
        f"{info['machine']}, {info['cpu_cores']} cores, torch {info['torch']} "
        f"({info['threads']} threads), {s['size']} px, batch {s['batch_size']} "
        f"(validation {s['val_batch_size']}), {s['precision']}, {s['warmup']} warm-up + "
        f"{s['steps']} timed steps, {s['repeats']} cxr/plain pairs per row; 1-minute load "
        f"{info['load_before'][0]:.1f} before, {info['load_after'][0]:.1f} after "
        f"({info['minutes']:.0f} min)" + (" - provisional (load > 1.5)" if load > 1.5 else ""),
        "",
        "| backbone | row | cxr img/s | plain img/s | cxr / plain | cxr warm-up s "
        "| before (channels-last off) img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cxr, plain = _median(r["runs"]["cxr"]), _median(r["runs"]["plain"])
        ratio = cxr / plain
        mark = "" if ratio >= TARGET else " (below 0.90)"
        before = _median(r["runs"]["before"])
        lines.append(
            f"| {r['backbone']} | {r['row']} | {cxr:.1f} | {plain:.1f} | {ratio:.2f}{mark} "
            f"| {_median(r['runs']['cxr'], 'warmup_seconds'):.1f} | "
            + (f"{before:.1f}" if r["runs"]["before"] else "-")
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
