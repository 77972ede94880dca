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
import torch.nn.functional as F

from cxr import RESEARCH_NOTICE
from cxr.choices import FIT_MODES
from cxr.images import IMAGE_SUFFIXES, ImageReadError
from cxr.labels import canonical_label

__all__ = [
    "BOX_COLUMNS",
    "LocalizationReport",
    "box_mask",
    "heatmap_iou",
    "heatmap_peak",
    "heatmap_to_image",
    "localization_report",
    "peak_distance",
    "phantom_masks",
    "pointing_game",
    "read_nih_boxes",
]

#: Columns of :func:`read_nih_boxes`' frame.
BOX_COLUMNS: tuple[str, ...] = ("image", "label", "x", "y", "w", "h")
NIH_FRAME = 1024
_BOX_FILES = ("BBox_List_2017.csv.gz", "BBox_List_2017.csv")
_PathLike = str | os.PathLike[str]


# measures ------------------------------------------------------------------------------------
def _pair(heatmap: np.ndarray, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    if heatmap.ndim != 2 or heatmap.shape != mask.shape:
        raise ValueError(
            f"{where}: heatmap {heatmap.shape} and mask {mask.shape} must be 2-D and "
            "the same shape; map the heatmap to the mask's frame (heatmap_to_image)"
        )
    if not mask.any():
        raise ValueError(f"{where}: the mask is empty (no finding pixel); leave this pair out")
    return heatmap, mask


def pointing_game(
    heatmaps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Hit (True) where the heatmap's peak lies in the mask: bool (N,).

    Args:
        heatmaps: N float maps (N, H, W) or a list of (H_i, W_i) maps.
        masks: N bool (or 0/1, 0/255) masks of the same shapes, none empty.
        tolerance: a peak within this many pixels (Euclidean, pixel centres) of a mask
            pixel is a hit too; 0 = strictly inside.

    The peak is :func:`heatmap_peak`'s; a constant heatmap (no peak, e.g. all zeros)
    counts as a miss.
    """
    if len(heatmaps) != len(masks):
        raise ValueError(f"pointing_game: {len(heatmaps)} heatmaps but {len(masks)} masks")
    if not math.isfinite(float(tolerance)) or tolerance < 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    return np.array(
        [
            peak_distance(h, m, f"pointing_game item {i}") <= tolerance
            for i, (h, m) in enumerate(zip(heatmaps, masks, strict=True))
        ],
        dtype=bool,
    )


def peak_distance(heatmap: np.ndarray, mask: np.ndarray, where: str = "peak_distance") -> float:
    """Distance in pixels from the heatmap's peak to the nearest mask pixel: 0 inside the
    mask, ``inf`` for a constant heatmap (no peak). Same shapes, mask not empty."""
    heatmap, mask = _pair(heatmap, mask, where)
    peak = heatmap_peak(heatmap)
    if peak is None:
        return math.inf
    if mask[peak]:
        return 0.0
    pts = np.argwhere(mask)
    return float(np.sqrt(((pts - np.asarray(peak)) ** 2).sum(axis=1).min()))


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of a heatmap's peak, or None for a constant map.

    Where several pixels share the maximum (within 1e-6 of the map's range; e.g. the flat
    border an upsampled coarse map has, or two pixels equally near a grid node), the peak
    is the tied pixel nearest to their centroid (the first in row-major order among
    equally near ones), not an arbitrary corner of the plateau.
    """
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf, posinf=np.inf)
    finite = h[np.isfinite(h)]
    if finite.size == 0 or finite.max() <= finite.min():
        return None
    hi, lo = float(finite.max()), float(finite.min())
    tied = np.argwhere(h >= hi - 1e-6 * (hi - lo))
    if len(tied) == 1:
        return int(tied[0, 0]), int(tied[0, 1])
    d = ((tied - tied.mean(axis=0)) ** 2).sum(axis=1)
    r, c = tied[int(np.argmin(d))]
    return int(r), int(c)


def heatmap_iou(
    heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5, quantile: float | None = None
) -> float:
    """IoU in [0, 1] of ``heatmap >= t`` with ``mask``.

    ``t = threshold * max(heatmap)`` (``threshold`` in (0, 1]); with ``quantile`` in
    (0, 1), ``t`` is that quantile of the heatmap's values instead. A constant heatmap
    (nothing above its minimum) gives 0.
    """
    heatmap, mask = _pair(heatmap, mask, "heatmap_iou")
    heatmap = np.nan_to_num(heatmap, nan=0.0)
    lo, hi = float(heatmap.min()), float(heatmap.max())
    if hi <= lo:
        return 0.0
    if quantile is not None:
        if not 0.0 < float(quantile) < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        t = float(np.quantile(heatmap, float(quantile)))
    else:
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(
                f"threshold must be a fraction of the maximum in (0, 1], got {threshold!r}"
            )
        t = float(threshold) * hi
    region = heatmap >= t
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def heatmap_to_image(
    heatmap: np.ndarray, image_shape: tuple[int, int], fit: str = "pad"
) -> np.ndarray:
    """Map a heatmap on the model's square input grid (S, S) to the original image's frame.

    Args:
        heatmap: float (S, S), as :func:`cxr.explain.grad_cam` gives it.
        image_shape: (H, W) of the original image, in pixels.
        fit: how the image was fitted into the square (:func:`cxr.images.fit_square`):
            ``pad`` (the image's area is cut out of the padded square) or ``crop`` (the
            central square of side min(H, W) is covered; the cropped sides get 0).

    Returns float32 (H, W), resized bilinearly (antialiased when shrinking).
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1]:
        raise ValueError(f"heatmap must be square (S, S), got {heatmap.shape}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    h, w = (int(v) for v in image_shape)
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be positive (H, W), got {image_shape!r}")
    s = heatmap.shape[0]
    if fit == "pad":  # same geometry as cxr.images.fit_square
        scale = s / max(w, h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0 = (s - new_w) // 2, (s - new_h) // 2
        return _resize(heatmap[y0 : y0 + new_h, x0 : x0 + new_w], (h, w))
    side = min(h, w)
    out = np.zeros((h, w), dtype=np.float32)
    top, left = (h - side) // 2, (w - side) // 2
    out[top : top + side, left : left + side] = _resize(heatmap, (side, side))
    return out


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if a.shape == tuple(shape):
        return a.astype(np.float32, copy=True)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    shrink = shape[0] < a.shape[0] or shape[1] < a.shape[1]
    return F.interpolate(
        t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink
    )[0, 0].numpy()


# truth: phantom masks and NIH boxes ---------------------------------------------------------
def phantom_masks(phantom_dir: _PathLike, image_name: str, label: str) -> np.ndarray | None:
    """The planted finding's mask of a phantom: bool (H, W), or None when that image does not
    carry ``label`` (no mask file).

    Args:
        phantom_dir: a folder written by :func:`cxr.synth.generate_phantoms`.
        image_name: the image's file name or path (only the name is used).
        label: a finding name (any spelling :func:`cxr.labels.canonical_label` knows).
    """
    from PIL import Image

    masks = Path(phantom_dir) / "masks"
    if not masks.is_dir():
        raise ValueError(
            f"{phantom_dir} holds no masks/ folder; pass a folder written by "
            "`cxr synth` / cxr.synth.generate_phantoms"
        )
    path = masks / f"{Path(str(image_name)).stem}_{canonical_label(label)}.png"
    if not path.is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def read_nih_boxes(path: _PathLike) -> pd.DataFrame:
    """Read NIH's ``BBox_List_2017.csv(.gz)``: DataFrame with columns ``image`` (file name),
    ``label`` (canonical, e.g. ``Infiltrate`` -> ``Infiltration``), ``x``, ``y``, ``w``, ``h``
    (float64, pixels of the original 1024x1024 frame; x, y the top-left corner).

    The file's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (the box split over
    four oddly named columns, two empty ones after); columns are taken by position.
    """
    import csv
    import gzip

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"box file {path} does not exist; pass NIH's BBox_List_2017.csv.gz")
    try:
        with open(path, "rb") as fh:
            packed = fh.read(2) == b"\x1f\x8b"
        opener = gzip.open if packed else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as err:
        raise ValueError(f"box file {path} cannot be read as CSV: {err}") from None
    if not rows or rows[0][0].strip().lower() != "image index":
        raise ValueError(
            f"box file {path}: the first column must be 'Image Index' (NIH's "
            "BBox_List_2017 layout: Image Index, Finding Label, x, y, w, h)"
        )
    short = [i for i, row in enumerate(rows[1:]) if len(row) < 6]
    if short:
        raise ValueError(
            f"box file {path}, line {short[0] + 2}: fewer than 6 fields "
            "(Image Index, Finding Label, x, y, w, h)"
        )
    raw = pd.DataFrame([[c.strip() for c in row[:6]] for row in rows], dtype=str)
    body = raw.iloc[1:, :6].copy()
    body.columns = list(BOX_COLUMNS)
    out = pd.DataFrame(
        {
            "image": body["image"].str.strip(),
            "label": [canonical_label(v) if v.strip() else "" for v in body["label"]],
        }
    )
    for col in ("x", "y", "w", "h"):
        values = pd.to_numeric(body[col].str.strip(), errors="coerce")
        bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float))
        if col in ("w", "h"):
            bad |= values.to_numpy(dtype=float) <= 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"box file {path}, line {row + 2}: column {col} holds "
                f"{body[col].iloc[row]!r}, not a {'positive ' if col in 'wh' else ''}"
                "number"
            )
        out[col] = values.to_numpy(dtype=np.float64)
    if (out["image"] == "").any() or (out["label"] == "").any():
        row = int(np.flatnonzero(((out["image"] == "") | (out["label"] == "")).to_numpy())[0])
        raise ValueError(f"box file {path}, line {row + 2}: empty image name or label")
    return out.reset_index(drop=True)


def box_mask(
    box: Sequence[float] | pd.Series,
    image_size: int | tuple[int, int],
    original: int | tuple[int, int] = NIH_FRAME,
) -> np.ndarray:
    """bool (H, W) mask of a box ``(x, y, w, h)`` given in an ``original`` frame (side, or
    (H0, W0); NIH: 1024), rescaled to an image of ``image_size`` (side, or (H, W)).

    A pixel is inside when its centre is; a box smaller than a pixel marks the pixel that
    holds its centre. Parts outside the image are dropped.
    """
    if isinstance(box, pd.Series):
        box = [box["x"], box["y"], box["w"], box["h"]]
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must be finite (x, y, w, h) with w, h > 0, got {tuple(box)}")
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    H0, W0 = (original, original) if isinstance(original, int) else original
    sx, sy = W / W0, H / H0
    x0, x1, y0, y1 = x * sx, (x + w) * sx, y * sy, (y + h) * sy
    cols = np.arange(W) + 0.5
    rows = np.arange(H) + 0.5
    mask = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    if not mask.any():
        cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
        if 0 <= cy < H and 0 <= cx < W:
            mask[cy, cx] = True
    return mask


# report ----------------------------------------------------------------------------------
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


def find_nih_boxes(source: Path) -> Path | None:
    """NIH's ``BBox_List_2017.csv(.gz)`` in ``source``, its parent or their
    ``nih14-metadata`` folders; None when there is none."""
    for folder in (
        source,
        source.parent,
        source / "nih14-metadata",
        source.parent / "nih14-metadata",
    ):
        for name in _BOX_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _phantom_items(source: Path, labels: Sequence[str]) -> list[tuple[Path, str, np.ndarray]]:
    from cxr.synth import table_from_dir

    table = table_from_dir(source)
    items = []
    for j, label in enumerate(table.pathologies):
        if label not in labels:
            continue
        for path, value in zip(table.paths, table.labels[:, j], strict=True):
            if value == 1:
                mask = phantom_masks(source, path, label)
                if mask is not None and mask.any():
                    items.append((Path(path), label, mask))
    return items


def _nih_items(
    source: Path, boxes_path: Path, labels: Sequence[str]
) -> list[tuple[Path, str, np.ndarray]]:
    from PIL import Image

    boxes = read_nih_boxes(boxes_path)
    folders = [source / "images", source] if (source / "images").is_dir() else [source]
    found: dict[str, Path] = {}
    for folder in folders:
        for p in folder.iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in found:
                found[p.name] = p
    grouped: dict[tuple[str, str], np.ndarray] = {}
    images: list[str] = boxes["image"].tolist()
    box_labels: list[str] = boxes["label"].tolist()
    xywh: list[list[float]] = boxes[["x", "y", "w", "h"]].to_numpy(dtype=np.float64).tolist()
    for image, label, box in zip(images, box_labels, xywh, strict=True):
        if label not in labels or image not in found:
            continue
        with Image.open(found[image]) as img:
            w, h = img.size
        m = box_mask(box, (h, w), NIH_FRAME)
        key = (image, label)
        grouped[key] = grouped[key] | m if key in grouped else m
    return [(found[img], label, m) for (img, label), m in grouped.items() if m.any()]


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
        kind, items = "phantoms", _phantom_items(source, wanted)
        truth = str(source / "masks")
    else:
        box_file = Path(boxes) if boxes is not None else find_nih_boxes(source)
        if box_file is None:
            raise ValueError(
                f"{source} is not a phantom folder (no labels.csv + masks/) and no "
                "BBox_List_2017.csv.gz was found near it; pass --boxes/boxes="
            )
        kind, items = "NIH boxes", _nih_items(source, box_file, wanted)
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
