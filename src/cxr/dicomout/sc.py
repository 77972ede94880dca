"""The heatmap of one image as a Secondary Capture any PACS viewer shows.

The picture is the caller's RGB overlay (uint8 (H, W, 3): the Grad-CAM heatmap blended on
the image, at whatever size the caller rendered it) with a black text panel below it:
the headline (:meth:`~.record.ImageResult.headline`), one line per finding with its
probability and threshold exactly as the SR and the table give them (3 decimals), and the
research-use notice. The canvas is widened (black to the right of the overlay) when a
line is wider than the overlay, so nothing is cut. The text is drawn with Pillow's own
default font (no font files needed), and the object says Burned In Annotation = YES.

The SC (highdicom ``SCImage``, RGB, 8 bits per sample, uncompressed) joins the source's
study in a new series; it references the source image (Source Image Sequence) and its
UIDs come from :func:`~.uids.result_uids` (same image and model -> same UIDs).
Research use only: cxr is not a medical device and its outputs are not a diagnosis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.dicomout.files import save_dataset
from cxr.dicomout.record import DicomOutError, ImageResult, format_pair, require_highdicom
from cxr.dicomout.uids import result_source, result_uids, source_image

__all__ = [
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_NUMBER",
    "build_sc",
    "panel_lines",
    "render_panel",
    "write_sc",
]

#: Series number and description of cxr's SC series in the source's study.
SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "cxr heatmap (research use only)"
_MANUFACTURER = "cxr"
_BIPED = frozenset("ALPRHFL")  # DICOM's biped patient orientation letters


def panel_lines(result: ImageResult) -> list[tuple[str, bool]]:
    """The text burnt into the panel, as (line, highlighted) pairs: the headline, one line
    per finding (``"Effusion  p=0.912  threshold 0.420  present"``, digits of
    :func:`~.record.format_pair`; highlighted when at or
    above its threshold; none for an image the gate flagged) and the research notice."""
    lines: list[tuple[str, bool]] = [(result.headline(), True)]
    if not result.not_chest:
        for name, p, t, d in zip(
            result.labels, result.probabilities, result.thresholds, result.decisions, strict=True
        ):
            ps, ts = format_pair(p, t)
            if t is None:
                lines.append((f"{name}  p={ps}  (no threshold)", False))
            else:
                word = "present" if d else "absent"
                lines.append((f"{name}  p={ps}  threshold {ts}  {word}", bool(d)))
    lines.append((RESEARCH_NOTICE, False))
    return lines


def _check_overlay(overlay: Any) -> np.ndarray:
    if (
        not isinstance(overlay, np.ndarray)
        or overlay.dtype != np.uint8
        or overlay.ndim != 3
        or overlay.shape[2] != 3
        or overlay.shape[0] < 1
        or overlay.shape[1] < 1
    ):
        desc = (
            f"{overlay.dtype} {overlay.shape}"
            if isinstance(overlay, np.ndarray)
            else type(overlay).__name__
        )
        raise DicomOutError(f"the overlay must be a uint8 (H, W, 3) RGB array, got {desc}")
    return overlay


def render_panel(overlay: np.ndarray, result: ImageResult) -> tuple[np.ndarray, int]:
    """The SC's picture: uint8 (H + panel, max(W, text width), 3) RGB, and the row where
    the text panel starts (= H). The font size is W / 40 pixels, between 10 and 32."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = _check_overlay(overlay)
    h, w = rgb.shape[:2]
    size = int(min(max(w // 40, 10), 32))
    font = ImageFont.load_default(size=size)
    lines = panel_lines(result)
    margin, step = size // 2 + 2, size + size // 3
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(int(probe.textlength(text, font=font)) for text, _ in lines) + 2 * margin
    canvas_w = max(w, width)
    panel_h = 2 * margin + step * len(lines)
    canvas = Image.new("RGB", (canvas_w, h + panel_h), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (text, highlight) in enumerate(lines):
        colour = (255, 220, 0) if highlight else (255, 255, 255)
        draw.text((margin, h + margin + i * step), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy(), h


def _orientation(source: Any) -> tuple[str, str] | None:
    value = getattr(source, "PatientOrientation", None)
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    pair = (str(value[0]), str(value[1]))
    return pair if all(p and set(p) <= _BIPED for p in pair) else None


def build_sc(
    source: Any,
    overlay: np.ndarray,
    result: ImageResult,
    *,
    series_number: int = SC_SERIES_NUMBER,
) -> Any:
    """The SC of ``result`` for ``source`` (a pydicom Dataset of the image the model read)
    with ``overlay`` (uint8 (H, W, 3) RGB) and the text panel of :func:`render_panel`, as a
    ``highdicom.sc.SCImage`` (a pydicom Dataset). The patient orientation is the source's
    (the panel only adds rows below and columns to the right); empty when the source has
    none."""
    hd = require_highdicom()
    if not isinstance(result, ImageResult):
        raise DicomOutError(f"build_sc: an ImageResult is needed, got {type(result).__name__}")
    source = result_source(source)  # no pixels; empty Type 2 patient/study attributes added
    src = source_image(source)
    pixels, _ = render_panel(overlay, result)
    uids = result_uids("sc", src, result.model_sha256)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_uid,
        series_number=series_number,
        sop_instance_uid=uids.instance_uid,
        instance_number=src.instance_number,
        manufacturer=_MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        series_description=SC_SERIES_DESCRIPTION,
        software_versions=f"cxr {__version__}",
    )
    if orientation is None:
        sc.PatientOrientation = None  # type 2: known to be unknown, never guessed
    if "Laterality" not in sc:
        # type 2C in General Series: the source's, else empty (unknown; a chest is unpaired)
        sc.Laterality = getattr(source, "Laterality", None) or None
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = (
        f"cxr heatmap of {result.model_name} {result.model_version}; findings burnt in"
    )[:1024]
    sc.ImageComments = RESEARCH_NOTICE
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = src.sop_class_uid
    ref.ReferencedSOPInstanceUID = src.sop_instance_uid
    sc.SourceImageSequence = [ref]
    return sc


def write_sc(
    path: str | os.PathLike[str],
    source: Any,
    overlay: np.ndarray,
    result: ImageResult,
    *,
    series_number: int = SC_SERIES_NUMBER,
) -> Path:
    """:func:`build_sc`, written to ``path`` atomically. Returns the path."""
    return save_dataset(build_sc(source, overlay, result, series_number=series_number), path)
