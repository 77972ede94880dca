"""The not-a-chest-X-ray gate (issue 12): detection rate per kind of foreign image and false
alarms on held-out phantoms.

Builds the test suite's phantom model (1000 phantoms at 64 px split 80/10/10 by patient, the
small CNN with a GeM head trained 16 epochs; ``cxr train`` fits the gate on the training
cache and its threshold, the 99th percentile, on the validation cache), then scores the
held-out test phantoms and the foreign images of ``tests/ood_images.py`` (scikit-image's
bundled photos and LFW faces, uniform noise, blank and rendered text images).

    python bench/ood_gate.py [--out /tmp/cxr-ood-gate]
    python bench/ood_gate.py --model RUN/best.safetensors --caches CACHE_ROOT  # reuse one

(``--caches`` holds ``train``, ``val``, ``test``; ``--model`` is a model trained on them,
e.g. the test suite's, whose gate is then fitted again on ``train``/``val``.)

Prints the table that BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import machine_line  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def train_model(out: Path) -> Path:
    """The test suite's phantom model (``cxr train`` stores its gate): the model path."""
    from conftest import PHANTOM_MODEL_EPOCHS, make_phantom_caches
    from cxr.training import TrainConfig, train

    caches = make_phantom_caches(out, 1000, 64)
    config = TrainConfig(
        backbone="cxr-small-cnn",
        pool="gem",
        phase1_epochs=0,
        phase2_epochs=PHANTOM_MODEL_EPOCHS,
        phase2_lr=3e-3,
        batch_size=32,
        device="cpu",
        seed=0,
    )
    result = train(config, caches["train"], caches["val"], out / "run", progress=False)
    return result.run_dir / "best.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/cxr-ood-gate"))
    ap.add_argument("--model", type=Path, help="reuse this phantom model (with --caches)")
    ap.add_argument("--caches", type=Path, help="folder with the train, val and test caches")
    args = ap.parse_args()
    import numpy as np
    import torch

    from cxr.cache import PreparedCache
    from cxr.inference import Predictor
    from cxr.ood import fit_model_gate
    from ood_images import KINDS, ood_images

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.time()
    if args.model is not None and args.caches is not None:
        caches = {k: args.caches / k for k in ("train", "val", "test")}
        model, _ = fit_model_gate(
            args.model, caches["train"], caches["val"], args.out / "gated.safetensors"
        )
    else:
        model = train_model(args.out)
        caches = {k: args.out / "cache" / k for k in ("train", "val", "test")}
    trained = time.time() - started
    predictor = Predictor(model)
    gate = predictor.ood
    assert gate is not None, "cxr train stored no gate"
    test = PreparedCache(caches["test"])
    sets = {"held-out phantoms (test cache)": test.read(np.arange(len(test)))}
    foreign = ood_images(predictor.size, predictor.fit)
    sets.update({k: foreign[k] for k in KINDS})
    t0 = time.time()
    rows = []
    for name, images in sets.items():
        _, scores = predictor.predict_arrays_ood(images)
        assert scores is not None
        flagged = gate.flags(scores)
        rows.append((name, len(images), int(flagged.sum()), float(np.median(scores))))
    scored = sum(r[1] for r in rows)
    seconds = time.time() - t0
    print(machine_line(torch=torch.__version__))
    print(f"gate: {gate.describe()}")
    print(
        f"model ready and gate fitted in {trained:.0f} s; scoring {scored} images: {seconds:.2f} s"
    )
    print()
    print("| images | n | flagged | rate | median score |")
    print("|---|---:|---:|---:|---:|")
    for name, n, k, med in rows:
        print(f"| {name} | {n} | {k} | {k / n:.1%} | {med:.2f} |")
    foreign_n = sum(r[1] for r in rows[1:])
    foreign_k = sum(r[2] for r in rows[1:])
    print(f"| all foreign images | {foreign_n} | {foreign_k} | {foreign_k / foreign_n:.1%} | |")


if __name__ == "__main__":
    main()
