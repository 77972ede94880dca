"""Does the heatmap point at the finding? Pointing game and IoU against masks or boxes.

Two measures per (image, label) pair whose finding has a known location:

- **pointing game** (Zhang et al., "Top-down neural attention by excitation backprop",
  2016): a hit when the heatmap's maximum (:func:`heatmap_peak`: where several pixels
  tie, the tied pixel nearest to their centroid) lies inside the finding's mask; a
  constant heatmap (no peak) is a miss. By default strictly inside (``tolerance=0``);
  the original paper (and TorchRay) count peaks within 15 pixels of the object as hits,
  which ``tolerance`` (pixels of the mask's frame) reproduces. :func:`peak_distance`
  gives the distance itself.
- **IoU** of the thresholded heatmap with the mask. The heatmap is binarised at
  ``threshold`` times its maximum (default 0.5, i.e. the half-maximum region), or, when
  ``quantile`` is given, at that quantile of its values (``0.9``: the hottest 10 %).

Both are computed in the frame of the original image (the mask's frame): the heatmap, on
the model's square input grid, is mapped back by :func:`heatmap_to_image` (the padding of
a ``pad`` fit is cut off; a ``crop`` fit leaves the cropped sides at zero).

Sources of truth:

- phantoms (:mod:`cxr.synth`): ``masks/<stem>_<Label>.png`` (0/255) beside ``images/``;
- NIH ChestX-ray14: the radiologist boxes of ``BBox_List_2017.csv.gz``, given in the
  original 1024x1024 pixel frame and rescaled to the image's real size (the 512x512
  copies of ``nih14-sample`` get halved boxes).

The measures are in :mod:`cxr.evaluation.heatmap_measures`, the masks and boxes in
:mod:`cxr.evaluation.finding_locations`.

Research use only: good localisation on phantoms does not make a heatmap a finding.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr import RESEARCH_NOTICE
from cxr.evaluation.finding_locations import (
    BOX_COLUMNS,
    box_mask,
    find_nih_boxes,
    nih_items,
    phantom_items,
    phantom_masks,
    read_nih_boxes,
)
from cxr.evaluation.heatmap_measures import (
    heatmap_iou,
    heatmap_peak,
    heatmap_to_image,
    peak_distance,
    pointing_game,
)
from cxr.images import ImageReadError
from cxr.labels import canonical_label

_PathLike = str | os.PathLike[str]

__all__ = [
    "BOX_COLUMNS",
    "LocalizationReport",
    "box_mask",
    "find_nih_boxes",
    "heatmap_iou",
    "heatmap_peak",
    "heatmap_to_image",
    "localization_report",
    "peak_distance",
    "phantom_masks",
    "pointing_game",
    "read_nih_boxes",
]


@dataclass
class LocalizationReport:
    """Pointing game and IoU per label.

    Attributes:
        per_label: label -> {"n": pairs, "hits": pointing-game hits, "pointing_game": hit
            rate, "pointing_game_tolerant": hit rate within the tolerance (only when it is
            > 0), "median_distance": median peak-to-mask distance in pixels, "mean_iou":
            mean IoU}; rates are NaN when n = 0.
        records: one dict per (image, label): image, label, probability, hit (strict),
            distance (pixels, inf without a peak), iou.
        settings: method, fit, input size, IoU threshold/quantile, tolerance, source.
        skipped: (image path, reason) of images that could not be read.
    """

    per_label: dict[str, dict[str, float]]
    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN and infinite values (no pairs, no peak) become None."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "notice": RESEARCH_NOTICE,
            "settings": dict(self.settings),
            "per_label": {
                k: {m: clean(v) for m, v in d.items()} for k, d in self.per_label.items()
            },
            "records": [{k: clean(v) for k, v in r.items()} for r in self.records],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }

    def to_text(self) -> str:
        s = self.settings
        tol = float(s.get("tolerance") or 0.0)
        iou = (
            f"IoU at the {s.get('quantile')} quantile"
            if s.get("quantile") is not None
            else f"IoU at {s.get('threshold', 0.5):g} x max"
        )
        head = f"{'label':<16}{'n':>5}{'pointing game':>15}"
        head += f"{f'within {tol:.1f} px':>17}" if tol > 0 else ""
        lines = [
            (
                f"Localisation ({s.get('method', '?')}) on {s.get('source_kind', '?')} "
                f"{s.get('source', '')}: pointing game (peak inside the finding), median "
                f"peak-to-finding distance (pixels of the image) and {iou}"
            ),
            head + f"{'median dist':>13}{'mean IoU':>10}",
        ]
        for label, d in self.per_label.items():

            def num(key: str, fmt: str = ".3f", d: dict = d) -> str:
                return "-" if d["n"] == 0 else format(d[key], fmt)

            row = f"{label:<16}{int(d['n']):>5}{num('pointing_game'):>15}"
            row += f"{num('pointing_game_tolerant'):>17}" if tol > 0 else ""
            lines.append(row + f"{num('median_distance', '.1f'):>13}{num('mean_iou'):>10}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {r}" for p, r in self.skipped[:20]]
        lines.append(RESEARCH_NOTICE)
        return "\n".join(lines)

    def save(self, out_dir: _PathLike) -> dict[str, Path]:
        """Write ``localization.json`` and ``localization.csv`` (records) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        js, csv = out / "localization.json", out / "localization.csv"
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        columns = ["image", "label", "probability", "hit", "distance", "iou"]
        pd.DataFrame(self.records, columns=columns).to_csv(csv, index=False, float_format="%.6g")
        return {"json": js, "csv": csv}


def localization_report(
    model_file: Any,
    source: _PathLike,
    labels: Sequence[str] | None = None,
    method: str = "gradcam",
    boxes: _PathLike | None = None,
    *,
    threshold: float = 0.5,
    quantile: float | None = None,
    tolerance: float = 0.0,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
) -> LocalizationReport:
    """Pointing game and IoU of a model's heatmaps against known finding locations.

    Args:
        model_file: a model file path or a :class:`cxr.modelfile.LoadedModel`.
        source: a phantom folder (``labels.csv`` + ``masks/``, written by ``cxr synth``) or
            a folder of NIH images (``images/*.png`` or the PNGs themselves).
        labels: labels to check (default: the model's labels that have locations).
        method: ``"gradcam"`` or ``"gradcam++"``.
        boxes: NIH's ``BBox_List_2017.csv(.gz)``; default: looked for in ``source``, its
            parent and their ``nih14-metadata`` folders. Ignored for phantoms.
        threshold, quantile: how heatmaps are binarised for the IoU (:func:`heatmap_iou`).
        tolerance: pixels (of the image's own frame) within which a peak near the mask
            also counts, reported as ``pointing_game_tolerant`` beside the strict
            ``pointing_game`` when > 0.
        batch_size: (image, label) pairs per Grad-CAM pass.

    Each pair is the image preprocessed as in training (the model's
    :class:`~cxr.preprocessing.Preprocessing`: its size and fit),
    the heatmap of that label mapped back to the image's frame, and its mask there.
    """
    from cxr.explain import check_method, grad_cam_maps
    from cxr.inference import TorchBackend, open_backend
    from cxr.preprocessing import to_model_input

    method = check_method(method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check = np.zeros((2, 2), np.float32)
    check[0, 0] = 1.0
    heatmap_iou(check, check > 0, threshold, quantile)  # a bad threshold/quantile fails here
    pointing_game([check], [check > 0], tolerance)  # and a bad tolerance
    backend = open_backend(model_file, device=device, channels_last=False)
    assert isinstance(backend, TorchBackend)
    model, spec, fit = backend.model, backend.spec, backend.spec.fit
    source = Path(source)
    if not source.is_dir():
        raise ValueError(
            f"source {source} is not a folder; pass a phantom folder (cxr synth) or "
            "a folder of NIH images"
        )
    if labels is None:
        wanted = list(spec.labels)
    else:
        wanted = [canonical_label(n) for n in labels]
        unknown = [n for n in wanted if n not in spec.labels]
        if unknown:
            raise ValueError(
                f"labels {unknown} are not labels of the model {backend.path}; it has "
                f"{list(spec.labels)}"
            )
    if (source / "labels.csv").is_file() and (source / "masks").is_dir():
        kind, items = "phantoms", phantom_items(source, wanted)
        truth = str(source / "masks")
    else:
        box_file = Path(boxes) if boxes is not None else find_nih_boxes(source)
        if box_file is None:
            raise ValueError(
                f"{source} is not a phantom folder (no labels.csv + masks/) and no "
                "BBox_List_2017.csv.gz was found near it; pass --boxes/boxes="
            )
        kind, items = "NIH boxes", nih_items(source, box_file, wanted)
        truth = str(box_file)
    if labels is None:
        wanted = [n for n in wanted if any(it[1] == n for it in items)]
    index = {n: i for i, n in enumerate(spec.labels)}

    records: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    pixels_cache: dict[Path, np.ndarray | None] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="map", desc="localize", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            chunk = []
            pixels: list[np.ndarray] = []  # the chunk's loaded images
            for path, label, mask in items[start : start + batch_size]:
                if path not in pixels_cache:
                    try:
                        pixels_cache[path] = spec.preprocessing.load(path)
                    except ImageReadError as err:
                        pixels_cache[path] = None
                        skipped.append((str(path), f"{err.reason}: {err.detail}"))
                cached = pixels_cache[path]
                if cached is not None:
                    chunk.append((path, label, mask))
                    pixels.append(cached)
            bar.update(min(batch_size, len(items) - start))
            if not chunk:
                continue
            x = to_model_input(torch.from_numpy(np.stack(pixels)), backend.device)
            maps = grad_cam_maps(model, x, [index[lab] for _, lab, _ in chunk], method)
            for k, (path, label, mask) in enumerate(chunk):
                heat = heatmap_to_image(maps.heatmaps[k], mask.shape, fit)
                distance = peak_distance(heat, mask)
                records.append(
                    {
                        "image": path.name,
                        "label": label,
                        "probability": float(maps.probabilities[k]),
                        "hit": distance == 0.0,
                        "distance": distance,
                        "iou": heatmap_iou(heat, mask, threshold, quantile),
                    }
                )
    finally:
        bar.close()
    per_label: dict[str, dict[str, float]] = {}
    nan = float("nan")
    for label in wanted:
        rows = [r for r in records if r["label"] == label]
        n = len(rows)
        hits = sum(r["hit"] for r in rows)
        d = {"n": n, "hits": hits, "pointing_game": hits / n if n else nan}
        if tolerance > 0:
            d["pointing_game_tolerant"] = (
                sum(r["distance"] <= tolerance for r in rows) / n if n else nan
            )
        d["median_distance"] = float(np.median([r["distance"] for r in rows])) if n else nan
        d["mean_iou"] = float(np.mean([r["iou"] for r in rows])) if n else nan
        per_label[label] = d
    settings = {
        "model": str(backend.path),
        "backbone": spec.backbone,
        "input_size": spec.input_size,
        "fit": fit,
        "method": method,
        "threshold": threshold,
        "quantile": quantile,
        "tolerance": tolerance,
        "source_kind": kind,
        "source": str(source),
        "truth": truth,
    }
    return LocalizationReport(per_label, records, settings, skipped)
