"""``cxr demo``: the whole pipeline on generated phantoms, with no data and no GPU.

Today it generates phantoms, checks their label table, splits them by patient, checks the
split for leakage and prepares the decode-once cache of each split. Training, evaluation
and Grad-CAM explanations join as they are built.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxr import RESEARCH_NOTICE


def run_demo(out: str | Path = "cxr-demo", n_images: int = 600, size: int = 128,
             workers: int | None = None, seed: int = 0, echo=print) -> dict[str, Path]:
    """Run the demo into ``out``; return the paths it wrote (name -> path).

    Args:
        out: output folder (phantoms/, split/, cache/<split>/).
        n_images: phantom images to generate.
        size: side of the cached images in pixels.
        workers: processes for generation and decoding (None = all cores).
        seed: seed of the phantoms and of the split.
        echo: where progress lines go (``print`` by default).
    """
    from cxr.cache import prepare
    from cxr.datasets import describe, load_dataset
    from cxr.leakage import find_leakage
    from cxr.split import save_split, split_by_patient, split_tables
    from cxr.synth import SynthConfig, generate_phantoms

    out = Path(out)
    written: dict[str, Path] = {}
    echo(RESEARCH_NOTICE)
    echo(f"[1/4] generating {n_images} phantom radiographs in {out / 'phantoms'}")
    generate_phantoms(out / "phantoms", SynthConfig(n_images=n_images, seed=seed),
                      workers=workers)
    written["phantoms"] = out / "phantoms"
    table = load_dataset(out / "phantoms")
    echo(describe(table).to_text())

    echo(f"[2/4] splitting by patient into {out / 'split'}")
    assignment = split_by_patient(table, seed=seed)
    written.update(save_split(out / "split", table, assignment))
    parts = split_tables(table, assignment)

    echo("[3/4] checking the split for patient leakage")
    report = find_leakage(parts)
    echo(report.to_text())
    if report.leaked:
        raise RuntimeError("the demo split leaks patients; this is a bug in cxr")

    echo(f"[4/4] preparing the decode-once cache ({size}x{size}) of each split")
    for name, part in parts.items():
        summary = prepare(part, out / "cache" / name, size, workers=workers,
                          progress=os.isatty(2), source=f"demo {name}")
        echo(summary.to_text())
        written[f"cache_{name}"] = out / "cache" / name
    echo("done. Written:")
    for name, path in written.items():
        echo(f"  {name}: {path}")
    return written
