"""ONNX Runtime against torch eager on the CPU (issue 12), in one run.

Usage:
    python bench/onnx_inference.py [--size 224] [--rounds 3] [--repeat 20] [--threads 2]
                                   [--cold 5] [--calibration 64]

DenseNet-121 with 14 labels at --size, random weights (no ImageNet weights exist offline;
the arithmetic is that of a trained model, only the probabilities mean nothing), saved as a
cxr model file and exported by `cxr.export.export_onnx` to fp32 and to static int8 (QDQ,
per-channel weights, calibrated on --calibration phantom radiographs prepared at --size;
forced, since the AUC check of random weights means nothing). Then, in alternating rounds
so that a change in the machine's load touches every engine alike:

  torch eager  : the classifier in channels-last memory format (the predictor's default),
                 fp32, torch.inference_mode, --threads threads;
  ORT fp32     : an ONNX Runtime session of the fp32 file (all graph optimisations,
                 --threads intra-op threads), as cxr.inference.OnnxBackend makes it;
  ORT int8     : the same for the int8 file.

Per engine: batch-1 latency (p50, p95 over rounds x --repeat forward passes of one
preprocessed image, after warm-up) and batch-16 throughput (16 / median time of a batch).
Then the cold start of `cxr predict MODEL.onnx one.png` (a fresh process: imports, reading
and verifying the file, the session, decoding the PNG, the forward pass): median of --cold
runs; and of the same command with the .safetensors model (--cold-torch runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import command_times, cpu_model, load_average  # bench/ is on sys.path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20, help="batch-1 passes per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--cold-torch", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=64)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import onnxruntime

    from cxr import __version__
    from cxr.cache import prepare
    from cxr.export import export_onnx
    from cxr.inference.onnx_backend import make_session
    from cxr.labels import NIH14_LABELS
    from cxr.modelfile import save_model
    from cxr.models import ModelSpec, Preprocessing, build_model
    from cxr.preprocessing import to_model_input
    from cxr.synth import SynthConfig, generate_phantoms

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average at start {load_average()}")
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, cxr {__version__}; {args.threads} threads"
    )
    tmp = Path(tempfile.mkdtemp(prefix="cxr-onnx-bench-"))
    torch.manual_seed(0)
    spec = ModelSpec(labels=NIH14_LABELS, preprocessing=Preprocessing(size=args.size))
    model = build_model(spec).eval()
    model_file = save_model(tmp / "d121.safetensors", model)
    table = generate_phantoms(
        tmp / "ph", SynthConfig(n_images=args.calibration, size=2 * args.size, seed=0), workers=1
    )
    prepare(table, tmp / "cache", args.size, workers=1, progress=False)
    start = time.perf_counter()
    fp32_report = export_onnx(model_file, tmp / "d121.onnx")
    print(f"export fp32: {time.perf_counter() - start:.1f} s")
    print(fp32_report.to_text().rstrip())
    start = time.perf_counter()
    int8_report = export_onnx(
        model_file,
        tmp / "d121.int8.onnx",
        quantize="int8",
        calibrate=tmp / "cache",
        calibration_images=args.calibration,
        force=True,
    )
    print(f"export int8 (incl. calibration): {time.perf_counter() - start:.1f} s")
    print(int8_report.to_text().rstrip())

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.batch, args.size, args.size), dtype=np.uint8)
    x_np = to_model_input(pixels)
    sessions = {
        "ORT fp32": make_session((tmp / "d121.onnx").read_bytes(), threads=args.threads),
        "ORT int8": make_session((tmp / "d121.int8.onnx").read_bytes(), threads=args.threads),
    }
    model_cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x_t = torch.from_numpy(x_np).contiguous(memory_format=torch.channels_last)

    def run_torch(n: int) -> None:
        with torch.inference_mode():
            model_cl(x_t[:n])

    def runner(session):  # noqa: ANN001, ANN202
        return lambda n: session.run(["probabilities"], {"input": x_np[:n]})

    engines = {"torch eager (channels-last)": run_torch} | {
        name: runner(s) for name, s in sessions.items()
    }
    single: dict[str, list[float]] = {name: [] for name in engines}
    batched: dict[str, list[float]] = {name: [] for name in engines}
    for fn in engines.values():  # warm-up
        for _ in range(3):
            fn(1)
        fn(args.batch)
    for _ in range(args.rounds):
        for name, fn in engines.items():
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn(1)
                single[name].append(time.perf_counter() - t)
            for _ in range(2):
                t = time.perf_counter()
                fn(args.batch)
                batched[name].append(time.perf_counter() - t)
    print(f"\nload average after the timed rounds: {load_average()}")
    base1 = 1 / np.median(single["torch eager (channels-last)"])
    base16 = args.batch / np.median(batched["torch eager (channels-last)"])
    print(
        f"\n| engine | batch 1 p50 (ms) | batch 1 p95 (ms) | batch 1 (img/s) | "
        f"batch {args.batch} (img/s) | x torch (1 / {args.batch}) |"
    )
    print("|---|---|---|---|---|---|")
    for name in engines:
        s, b = np.array(single[name]), np.array(batched[name])
        t1, t16 = 1 / np.median(s), args.batch / np.median(b)
        print(
            f"| {name} | {1000 * np.median(s):.0f} | {1000 * np.percentile(s, 95):.0f} | "
            f"{t1:.1f} | {t16:.1f} | {t1 / base1:.2f} / {t16 / base16:.2f} |"
        )
    i8 = np.median(single["ORT int8"]), np.median(batched["ORT int8"])
    f32 = np.median(single["ORT fp32"]), np.median(batched["ORT fp32"])
    print(f"\nint8 vs fp32 speed-up: batch 1 x{f32[0] / i8[0]:.2f}, batch 16 x{f32[1] / i8[1]:.2f}")

    image = tmp / "one.png"
    from PIL import Image

    Image.fromarray(pixels[0]).save(image)
    cxr = [sys.executable, "-m", "cxr", "predict"]
    onnx_cold = command_times(
        [*cxr, str(tmp / "d121.onnx"), str(image), "--no-progress"], args.cold
    )
    torch_cold = command_times(
        [*cxr, str(model_file), str(image), "--no-progress"], args.cold_torch
    )
    print(
        f"\ncold start `cxr predict MODEL one.png` (fresh process): ONNX median "
        f"{np.median(onnx_cold):.2f} s (runs {', '.join(f'{v:.2f}' for v in onnx_cold)}); "
        f"torch median {np.median(torch_cold):.2f} s "
        f"(runs {', '.join(f'{v:.2f}' for v in torch_cold)})"
    )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
