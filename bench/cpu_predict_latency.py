"""CPU latency of `cxr predict` (issue 6, figure 4): one image, with Grad-CAM, batches,
and the start-up of the command.

Usage:
    python bench/cpu_predict_latency.py [--backbone densenet121] [--size 224] [--repeat 30]
                                        [--threads N] [--image PNG]

A model file of the backbone (random weights: the same arithmetic as trained ones) is
saved to a temporary folder and loaded once; then, with the model already loaded:

  file -> probabilities : decode + resize the PNG (default: an NIH original at 1024x1024
                          from ../shared/datasets/nih14-fullres, else a 1024x1024 phantom)
                          and one forward pass, as `cxr predict` does per image;
  forward only          : the preprocessed (size x size) image through the model;
  + Grad-CAM, one label : the forward and backward pass of `cxr.explain.explain`;
  batch throughput      : images/s of `Predictor.predict_arrays` on batches of 32;
  memory format         : images/s at batch 1 and 32 with channels-last off and on
                          (Predictor(channels_last=...)), alternated over 3 rounds;
  start-up              : wall time of `cxr --help` and of a whole `cxr predict MODEL IMAGE`
                          in a fresh process (import torch, load and check the model file).

Latencies: median and 95th percentile over --repeat runs after 3 warm-up runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import command_times, timings  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "datasets" / "nih14-fullres" / "images"


def _row(name: str, seconds: np.ndarray) -> str:
    return (
        f"| {name} | {1000 * np.median(seconds):.0f} | {1000 * np.percentile(seconds, 95):.0f} "
        f"| {len(seconds)} |"
    )


def _image(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    found = sorted(NIH.glob("*.png")) if NIH.is_dir() else []
    if found:
        return found[0]
    from cxr.synth import SynthConfig, generate_phantoms

    table = generate_phantoms(tmp / "ph", SynthConfig(n_images=1, size=1024, seed=0), workers=1)
    return Path(table.paths[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--image", help="PNG/JPEG/DICOM to predict (default: an NIH original)")
    args = ap.parse_args()

    import torch

    import cxr
    from cxr.explain import explain
    from cxr.inference import Predictor
    from cxr.modelfile import save_model
    from cxr.models import ModelSpec, Preprocessing, build_model

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    try:
        image_path = _image(args.image, tmp)
        torch.manual_seed(0)
        spec = ModelSpec(
            labels=cxr.NIH14_LABELS,
            backbone=args.backbone,
            preprocessing=Preprocessing(size=args.size),
        )
        model_file = save_model(tmp / "model.safetensors", build_model(spec))
        predictor = Predictor(model_file, batch_size=32)
        image = predictor.preprocess(image_path)
        batch = np.repeat(image[None], 32, axis=0)

        rows = [
            _row(
                "file -> probabilities (decode, resize, forward)",
                timings(
                    lambda: predictor.predict_arrays(predictor.preprocess(image_path)), args.repeat
                ),
            ),
            _row(
                "forward only (preprocessed image)",
                timings(lambda: predictor.predict_arrays(image), args.repeat),
            ),
            _row(
                "forward + Grad-CAM of one label",
                timings(
                    lambda: explain(predictor.model, image, labels=[spec.labels[0]]), args.repeat
                ),
            ),
        ]
        batch_s = timings(
            lambda: predictor.predict_arrays(batch), max(3, args.repeat // 6), warmup=1
        )
        formats = {}
        for _ in range(3):
            for cl in (False, True):
                p = Predictor(model_file, batch_size=32, channels_last=cl)
                for b in (1, 32):
                    runs = max(3, args.repeat // (6 if b > 1 else 3))
                    t = timings(lambda p=p, b=b: p.predict_arrays(batch[:b]), runs, warmup=1)
                    formats.setdefault((cl, b), []).append(b / np.median(t))
        exe = shutil.which("cxr") or str(Path(sys.executable).with_name("cxr"))
        help_s = command_times([exe, "--help"], 5)
        full_s = command_times(
            [exe, "predict", str(model_file), str(image_path), "--no-progress"], 5
        )

        print(
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads; "
            f"Python {platform.python_version()}, torch {torch.__version__}, cxr {cxr.__version__}"
        )
        print(
            f"Model: {args.backbone} "
            f"({sum(p.numel() for p in predictor.model.parameters()) / 1e6:.1f} M "
            f"parameters), {args.size}x{args.size}, fp32, 14 labels; image {image_path.name} "
            f"({'x'.join(map(str, _size(image_path)))})\n"
        )
        print("| single image, model loaded | median (ms) | p95 (ms) | runs |")
        print("|---|---|---|---|")
        print("\n".join(rows))
        print(
            f"\nbatch of 32 (preprocessed): {32 / np.median(batch_s):.1f} images/s "
            f"(median of {len(batch_s)} batches)"
        )
        for b in (1, 32):
            off, on = (np.median(formats[(cl, b)]) for cl in (False, True))
            print(
                f"batch {b}: contiguous {off:.1f} img/s, channels-last {on:.1f} img/s "
                f"(median of 3 rounds; x{on / off:.2f})"
            )
        print(
            f"start-up: `cxr --help` {np.median(help_s):.2f} s; whole `cxr predict MODEL IMAGE` "
            f"{np.median(full_s):.2f} s (median of 5 fresh processes)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except OSError:
        return (0, 0)


if __name__ == "__main__":
    main()
