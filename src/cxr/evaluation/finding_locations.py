"""Where findings are: phantom masks and NIH radiologist boxes, as pixel masks.

- phantoms (:mod:`cxr.synth`): ``masks/<stem>_<Label>.png`` (0/255) beside ``images/``;
- NIH ChestX-ray14: the boxes of ``BBox_List_2017.csv.gz``, given in the original
  1024x1024 pixel frame and rescaled to the image's real size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.images import IMAGE_SUFFIXES
from cxr.labels import canonical_label

_PathLike = str | os.PathLike[str]

__all__ = [
    "BOX_COLUMNS",
    "NIH_FRAME",
    "box_mask",
    "find_nih_boxes",
    "nih_items",
    "phantom_items",
    "phantom_masks",
    "read_nih_boxes",
]

#: Columns of :func:`read_nih_boxes`' frame.
BOX_COLUMNS: tuple[str, ...] = ("image", "label", "x", "y", "w", "h")
NIH_FRAME = 1024
_BOX_FILES = ("BBox_List_2017.csv.gz", "BBox_List_2017.csv")


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


def phantom_items(source: Path, labels: Sequence[str]) -> list[tuple[Path, str, np.ndarray]]:
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


def nih_items(
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
