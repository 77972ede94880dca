"""The SR and the SC of every DICOM image a prediction run predicted, as
``cxr predict --dicom-out DIR`` writes them for files on disk.

:func:`write_dicom_results` takes a :class:`~cxr.inference.PredictionResult` of
:meth:`~cxr.inference.Predictor.predict_images` and, per predicted DICOM file, builds one
:class:`~.record.ImageResult` from the same numbers the prediction table shows (the
item's probabilities on the predictor's output scale, ``result.thresholds``, the gate's
flag), then writes ``OUT/<stem>_sr.dcm`` (:func:`~.sr.write_sr`) and ``OUT/<stem>_sc.dcm``
(:func:`~.sc.write_sc`). The SC's picture is the Grad-CAM overlay of the top findings
(one tile per finding, side by side, each captioned with the finding and its table p),
at the source image's size. Files that are not DICOM are skipped (an SR and an SC must
reference a source SOP instance) and named in ``skipped``. :func:`image_result` makes the
record; ``cxr serve`` builds the SR it offers for download from the same function.

Research use only: cxr is not a medical device and its outputs are not a diagnosis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr import __version__
from cxr.dicomout.record import DicomOutError, ImageResult, format_pair
from cxr.dicomout.sc import write_sc
from cxr.dicomout.sr import write_sr
from cxr.explain import CamUnavailable, explainer_for, overlay
from cxr.explain.frame import heatmap_to_image
from cxr.explain.writer import ranked_labels, unique_stem
from cxr.images import is_dicom, read_gray
from cxr.modelformat.filehash import file_sha256

if TYPE_CHECKING:
    from cxr.inference import ImagePrediction, PredictionResult, Predictor

__all__ = ["MAX_TILE_SIDE", "image_result", "overlay_tiles", "write_dicom_results"]

#: The longest side (pixels) of one overlay tile of the SC; larger images are scaled down.
MAX_TILE_SIDE = 1024


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` uint8 (H, W, 3) with ``text`` written on a black strip at its top left."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = tile.shape[:2]
    size = int(min(max(w // 32, 10), 32))
    font = ImageFont.load_default(size=size)
    img = Image.fromarray(tile, mode="RGB")
    draw = ImageDraw.Draw(img)
    width = int(draw.textlength(text, font=font))
    draw.rectangle((0, 0, min(w, width + size), min(h, size + size // 2)), fill=(0, 0, 0))
    draw.text((size // 2, size // 6), text, fill=(255, 220, 0), font=font)
    return np.asarray(img, dtype=np.uint8).copy()


def overlay_tiles(
    image: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    captions: Sequence[str],
    fit: str = "pad",
) -> np.ndarray:
    """The SC's picture: uint8 (H', W' x max(1, K), 3) RGB.

    Args:
        image: the source image, float (H, W) in [0, 1] (as :func:`cxr.images.read_gray`
            gives it) at its own size; scaled to at most :data:`MAX_TILE_SIDE` pixels on
            its longer side (H', W').
        heatmaps: K float (S, S) heatmaps in [0, 1] over the model's fitted square; each
            becomes one tile (the ``jet`` overlay of :func:`cxr.explain.overlay`). None
            (K = 0): one tile of the gray image without overlay.
        captions: K texts, one burnt into each tile's top left.
        fit: the model's fit (``pad`` or ``crop``), to map the heatmaps onto the image.
    """
    from PIL import Image

    gray = np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)
    h, w = gray.shape
    if max(h, w) > MAX_TILE_SIDE:
        scale = MAX_TILE_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
        h, w = gray.shape
    if not heatmaps:
        return np.repeat(gray[..., None], 3, axis=2)
    tiles = [
        _caption(overlay(gray, heatmap_to_image(hm, (h, w), fit)), text)
        for hm, text in zip(heatmaps, captions, strict=True)
    ]
    return np.concatenate(tiles, axis=1)


def _read_source(path: str) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as err:
        raise DicomOutError(f"cannot read the source DICOM {path}: {err}") from None


def image_result(
    predictor: Predictor,
    result: PredictionResult,
    item: ImagePrediction,
    model_sha256: str,
) -> ImageResult:
    """The one record the SR and the SC of ``item`` carry (``cxr predict --dicom-out`` and
    ``cxr serve``'s SR download both build it here): ``item``'s float32 (L,) probabilities
    as the prediction table shows them, ``result.labels`` and ``result.thresholds``, the
    gate's flag, the model's backbone as its name, cxr's version and ``model_sha256`` (the
    model file's SHA-256, 64 hex digits). Raises :class:`~.record.DicomOutError` when a
    value cannot go into DICOM; a ValueError when ``item`` was skipped."""
    return ImageResult.from_prediction(
        result.labels,
        item.values(),
        result.thresholds,
        not_chest=item.ood_flag,
        model_name=str(predictor.spec.backbone)[:64],
        model_version=__version__,
        model_sha256=model_sha256,
    )


def write_dicom_results(
    predictor: Predictor,
    result: PredictionResult,
    out_dir: str | os.PathLike[str],
    *,
    top_k: int = 3,
    method: str = "gradcam",
    skipped: list[str] | None = None,
) -> list[Path]:
    """Write an SR (TID 1500) and an SC with the heatmap per predicted DICOM image.

    Args:
        predictor: the predictor that made ``result`` (its model file is hashed, its
            backend makes the heatmaps, its preprocessing reads each image again).
        result: its prediction; the SR and SC carry each item's probabilities and
            ``result.thresholds`` exactly (float32 probabilities on the output scale).
        out_dir: the folder (created); files ``<stem>_sr.dcm`` and ``<stem>_sc.dcm``
            after the image's file name (``<stem>-2_...`` for a second image of that name).
        top_k: how many of the most probable findings get an overlay tile (1 to L).
        method: ``"gradcam"`` or ``"gradcam++"``.
        skipped: when given, one line per input that got no SR and SC is appended (a file
            that is not DICOM; a backend without heatmaps: the SC shows the image only).

    Returns:
        The files written, SR then SC per image, in the order of ``result.predicted``.

    Raises:
        DicomOutError: a source that cannot be read or lacks its UIDs; bad ``top_k``.
        MissingExtraError: highdicom is not installed.
        ImageReadError, OSError: an image cannot be read again, or a file written.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DicomOutError(f"top_k must be an integer >= 1, got {top_k!r}")
    notes = skipped if skipped is not None else []
    dicoms = []
    for it in result.predicted:
        if is_dicom(it.path):
            dicoms.append(it)
        else:
            notes.append(
                f"{it.path}: not a DICOM file (an SR and an SC must reference a source DICOM image)"
            )
    if not dicoms:
        return []
    try:
        explainer = explainer_for(predictor)
    except CamUnavailable as err:
        explainer = None
        notes.append(f"no heatmaps ({err}): the SCs show the images without overlay")
    else:
        if explainer is None:
            notes.append(
                f"the {predictor.backend.name} backend makes no heatmaps: the SCs show the "
                "images without overlay"
            )
    sha, _ = file_sha256(predictor.path)
    out = Path(out_dir)
    written: list[Path] = []
    used: set[str] = set()
    for it in dicoms:
        source = _read_source(it.path)
        record = image_result(predictor, result, it, sha)
        probs = it.values()
        heatmaps: list[np.ndarray] = []
        captions: list[str] = []
        if explainer is not None and not record.not_chest:
            chosen = ranked_labels(result, it, min(top_k, len(result.labels)))
            found = explainer(predictor.preprocess(it.path), labels=chosen, method=method)
            by_label = {ex.label: ex for ex in found}
            for name in chosen:
                i = result.labels.index(name)
                p, _ = format_pair(float(probs[i]), result.thresholds.get(name))
                heatmaps.append(by_label[name].heatmap)
                captions.append(f"{name}  p={p}")
        picture = overlay_tiles(read_gray(it.path), heatmaps, captions, predictor.fit)
        base = unique_stem(it.path, used)
        written.append(write_sr(out / f"{base}_sr.dcm", source, record))
        written.append(write_sc(out / f"{base}_sc.dcm", source, picture, record))
    return written
