"""Peak memory of `cxr prepare` and of training, and the cache's size on disk (issue 6,
figure 6), with the NIH-scale (112,120 images) figures they imply.

Usage:
    python bench/memory_and_cache_size.py [--workers 2] [--train-images 96]

Each measurement runs in a fresh Python process, which reports its own peak resident set
(VmHWM) and, for prepare, the largest peak of its worker processes (RUSAGE_CHILDREN):

  prepare : the 24 NIH originals of ../shared/datasets/nih14-fullres (1024x1024 PNG)
            listed R times, at 224 px, three times (R = 10, 40, 100: 240 to 2,400 images) to show
            whether the peak grows with the number of images;
  training: `cxr.training.train` of DenseNet-121 at 224 px, batch 16, fp32 on the CPU, one
            epoch over a cache of --train-images images (the cache is memory-mapped: its
            pages are file-backed, reclaimable page cache, reported apart as RssFile);
  cache   : bytes per image of pixels.npy (measured on the 224 px cache) and of labels.csv
            (measured by writing the full NIH label table), projected to 112,120 images
            at 224, 256, 320, 384, 512 and 1024 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
NIH_IMAGES = 112_120

_PREPARE = r"""
import json, resource, sys
import numpy as np
from pathlib import Path
from cxr.cache import prepare
from cxr.table import LabelTable
src, out, repeat, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
paths = [str(p) for p in sorted(src.glob("*.png"))] * repeat
n = len(paths)
table = LabelTable.from_columns(paths, [str(i) for i in range(n)], np.zeros((n, 0)), [])
s = prepare(table, out, 224, workers=workers, progress=False)
lines = Path("/proc/self/status").read_text().splitlines()
status = dict(line.split(":", 1) for line in lines if ":" in line)
print(json.dumps({"images": len(paths), "stored": s.stored,
                  "vm_hwm_kb": int(status["VmHWM"].split()[0]),
                  "children_max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "pixels_bytes": (out / "pixels.npy").stat().st_size}))
"""

_TRAIN = r"""
import json, sys, threading, time
from pathlib import Path
import torch
from cxr.training import TrainConfig, train
cache, run, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
peak = {"anon": 0, "file": 0}
def field(name):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0
def sample():
    while True:
        peak["anon"] = max(peak["anon"], field("RssAnon"))
        peak["file"] = max(peak["file"], field("RssFile"))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
cfg = TrainConfig(backbone="densenet121", phase1_epochs=0, phase2_epochs=1, batch_size=16,
                  val_batch_size=16, device="cpu", seed=0)
start = time.perf_counter()
train(cfg, cache, cache, run, progress=False, echo=lambda s: None)
print(json.dumps({"seconds": time.perf_counter() - start, "vm_hwm_kb": field("VmHWM"),
                  "rss_anon_peak_kb": peak["anon"], "rss_file_peak_kb": peak["file"]}))
"""


def _run(code: str, *args: object) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _labelled_cache(src: Path, out: Path, n: int) -> Path:
    """A 224 px cache of n images (the NIH originals repeated) with two random labels."""
    import numpy as np

    from cxr.cache import prepare
    from cxr.table import LabelTable

    paths = [str(p) for p in sorted(src.glob("*.png"))]
    paths = (paths * (n // len(paths) + 1))[:n]
    rng = np.random.default_rng(0)
    labels = (rng.random((n, 2)) < 0.4).astype(np.float32)
    table = LabelTable.from_columns(paths, [str(i) for i in range(n)], labels, ["Effusion", "Mass"])
    prepare(table, out, 224, workers=1, progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--train-images", type=int, default=96)
    args = ap.parse_args()
    import torch

    import cxr

    src = SHARED / "nih14-fullres" / "images"
    if not src.is_dir():
        raise SystemExit(f"needs the NIH originals in {src}")
    tmp = Path(tempfile.mkdtemp(prefix="cxr-mem-"))
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, cxr {cxr.__version__}\n"
    )

    print(f"prepare at 224 px, {args.workers} worker processes:\n")
    print("| images | main process peak RSS (MiB) | largest worker peak RSS (MiB) |")
    print("|---|---|---|")
    per_image = None
    for repeat in (10, 40, 100):
        r = _run(_PREPARE, src, tmp / f"prep{repeat}", repeat, args.workers)
        per_image = (r["pixels_bytes"] - 128) / r["images"]
        print(
            f"| {r['images']} | {r['vm_hwm_kb'] / 1024:.0f} | "
            f"{r['children_max_rss_kb'] / 1024:.0f} |"
        )

    cache = _labelled_cache(src, tmp / "train_cache", args.train_images)
    r = _run(_TRAIN, cache, tmp / "run", os.cpu_count())
    print(
        f"\ntraining DenseNet-121, 224 px, batch 16, fp32, CPU, {args.train_images} images, "
        f"1 epoch ({r['seconds']:.0f} s):\n"
    )
    print(
        f"peak RSS {r['vm_hwm_kb'] / 1024:.0f} MiB: anonymous (model, optimizer, activations, "
        f"batches) {r['rss_anon_peak_kb'] / 1024:.0f} MiB, file-backed (libraries, the mapped "
        f"cache) {r['rss_file_peak_kb'] / 1024:.0f} MiB"
    )

    from cxr.datasets import load_dataset

    table = load_dataset(SHARED / "nih14-metadata")
    csv = table.save_csv(tmp / "nih_labels.csv")
    csv_per_image = Path(csv).stat().st_size / len(table)
    print(
        f"\ncache size on disk for {NIH_IMAGES:,} images (pixels.npy: {per_image:.0f} B per image "
        f"measured at 224 px = 224^2; labels.csv {csv_per_image:.0f} B per image measured on the "
        "full NIH table; status.npy 1 B per image):\n"
    )
    print("| side (px) | pixels.npy (GiB) | whole cache (GiB) |")
    print("|---|---|---|")
    for side in (224, 256, 320, 384, 512, 1024):
        pixels = NIH_IMAGES * side * side + 128
        whole = pixels + NIH_IMAGES * (csv_per_image + 1)
        print(f"| {side} | {pixels / 2**30:.2f} | {whole / 2**30:.2f} |")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
