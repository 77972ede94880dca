"""DICOM as hospitals send it: decoding, the modality check and the tags.

:func:`read_dicom` is the DICOM branch of :mod:`cxr.images` (``read_gray``,
``load_for_cache``, ``load_bytes``). What it accepts is a :class:`DicomPolicy`:

- the modality check: a file whose ``Modality`` is set and is not ``CR`` or ``DX``, or
  whose ``BodyPartExamined`` is set and is not the chest, is refused with the reason
  ``wrong-modality`` (a CT or MR slice is not a chest radiograph), unless
  ``any_modality=True`` (``--allow-any-modality``). A file without a ``Modality`` tag is
  accepted (secondary captures written by other tools often lack it);
- multi-frame files: the first frame is used, with a :class:`DicomWarning` saying so
  (``multiframe="first"``, the default), or the file is refused
  (``multiframe="refuse"``, reason ``unsupported``).

The policy is passed explicitly (``dicom=``) or taken from the process-wide default
(:func:`get_dicom_policy`, set with :func:`set_dicom_policy` or, for a block,
:func:`dicom_policy`). Compressed transfer syntaxes (JPEG Baseline/Extended/Lossless,
JPEG-LS, JPEG 2000, RLE, deflate) decode with the plugins installed with cxr (pylibjpeg
with libjpeg, openjpeg and RLE; pyjpegls). Files without a file meta header (no
``DICM`` prefix) are read when they hold a DICOM data set. pydicom's own warnings
become one :class:`DicomWarning` each, ``"{file}: {message}"``.

pydicom is imported on the first DICOM file only (see
:func:`cxr.imagefile.pydicom_modules`). This module imports nothing of cxr above
:mod:`cxr.imagefile`: :mod:`cxr.images` imports it, not the reverse.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from cxr.choices import MULTIFRAME_MODES
from cxr.imagefile import LUMA, ImageReadError, pydicom_modules

__all__ = [
    "CHEST_BODY_PARTS",
    "CHEST_MODALITIES",
    "MULTIFRAME_MODES",
    "DicomPolicy",
    "DicomWarning",
    "dicom_policy",
    "get_dicom_policy",
    "modality_problem",
    "read_dicom",
    "read_tags",
    "set_dicom_policy",
]

#: Modalities of chest radiographs: computed and digital radiography.
CHEST_MODALITIES: frozenset[str] = frozenset({"CR", "DX"})
#: ``BodyPartExamined`` values that mean the chest (DICOM's defined term is ``CHEST``).
CHEST_BODY_PARTS: frozenset[str] = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})

_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "OT": "other",
    "SC": "secondary capture",
    "SEG": "segmentation",
    "SR": "structured report",
    "ECG": "electrocardiogram",
    "RTDOSE": "radiotherapy dose",
    "RTPLAN": "radiotherapy plan",
    "RTSTRUCT": "radiotherapy structure set",
    "RTIMAGE": "radiotherapy image",
}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DicomWarning(UserWarning):
    """Something about a DICOM file worth saying (a pydicom warning, the first frame of a
    multi-frame file used); the message starts with the file."""


@dataclass(frozen=True)
class DicomPolicy:
    """Which DICOM files are decoded.

    Attributes:
        any_modality: accept every modality and body part (default: only ``CR``/``DX``,
            or no ``Modality`` tag, and a body part that is unset or the chest).
        multiframe: ``"first"`` (use the first frame, with a warning) or ``"refuse"``.
    """

    any_modality: bool = False
    multiframe: str = "first"

    def __post_init__(self) -> None:
        if not isinstance(self.any_modality, bool):
            raise ValueError(f"any_modality must be True or False, got {self.any_modality!r}")
        if self.multiframe not in MULTIFRAME_MODES:
            raise ValueError(
                f"multiframe must be one of {MULTIFRAME_MODES}, got {self.multiframe!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_current = DicomPolicy()


def get_dicom_policy() -> DicomPolicy:
    """The process-wide policy used when none is passed."""
    return _current


def set_dicom_policy(policy: DicomPolicy) -> DicomPolicy:
    """Set the process-wide policy; returns the one it replaces."""
    global _current
    if not isinstance(policy, DicomPolicy):
        raise TypeError(f"policy must be a DicomPolicy, got {type(policy).__name__}")
    previous, _current = _current, policy
    return previous


@contextmanager
def dicom_policy(policy: DicomPolicy | None = None, **changes: Any) -> Iterator[DicomPolicy]:
    """Use ``policy`` (default: the current one), with ``changes`` applied, as the
    process-wide policy within the block: ``with dicom_policy(any_modality=True): ...``."""
    chosen = replace(policy or _current, **changes)
    previous = set_dicom_policy(chosen)
    try:
        yield chosen
    finally:
        set_dicom_policy(previous)


def modality_problem(modality: str, body_part: str) -> str | None:
    """Why a file of this ``Modality`` / ``BodyPartExamined`` is no chest radiograph, or
    None when it may be one (empty values are unknown and accepted)."""
    modality, body_part = modality.strip().upper(), body_part.strip().upper()
    if modality and modality not in CHEST_MODALITIES:
        name = _MODALITY_NAMES.get(modality)
        shown = f"{modality} ({name})" if name else modality
        return f"Modality is {shown}, not a chest radiograph (CR or DX)"
    if body_part and body_part not in CHEST_BODY_PARTS:
        return f"BodyPartExamined is {body_part}, not CHEST"
    return None


def _text(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a malformed element: treated as absent
        return ""
    if value is None:
        return ""
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):  # multi-valued
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


@contextmanager
def _reissued_warnings(path: str) -> Iterator[None]:
    """Catch pydicom's warnings within the block and issue each distinct one again, once,
    as a one-line :class:`DicomWarning` naming the file (whatever happens in the block)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        seen: set[str] = set()
        for w in caught:
            text = " ".join(str(w.message).split())
            if text not in seen:
                seen.add(text)
                warnings.warn(f"{path}: {text}", DicomWarning, stacklevel=4)


def _dcmread(path: str, data: bytes | None, stop_before_pixels: bool = False) -> Any:
    pydicom, InvalidDicomError = pydicom_modules()[:2]

    def source() -> Any:
        return path if data is None else io.BytesIO(data)

    try:
        return pydicom.dcmread(source(), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        ds = _read_without_meta(pydicom, source(), stop_before_pixels)
        if ds is None:
            raise ImageReadError(path, "unsupported", f"not a DICOM file: {err}") from None
        return ds
    except Exception as err:
        raise _dicom_error(path, err) from None


def _read_without_meta(pydicom: Any, source: Any, stop_before_pixels: bool) -> Any:
    """A data set saved without the 128-byte preamble and file meta header (older
    writers), or None when the bytes do not hold one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # garbage read by force warns at every element
            ds = pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
        if "SOPClassUID" not in ds and not any(k in ds for k in _PIXEL_TAGS):
            return None
        str(ds.SOPClassUID if "SOPClassUID" in ds else "")  # parses the value
    except Exception:
        return None
    _set_transfer_syntax(ds)
    return ds


def _set_transfer_syntax(ds: Any) -> None:
    """A data set without a transfer syntax in its meta header (read without one): the
    syntax it was read with, when its pixel data are not encapsulated (compressed)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        return  # encapsulated: the codec cannot be guessed
    encoding = getattr(ds, "original_encoding", None) or (None, None)
    implicit, little = encoding
    if implicit is None:
        return
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax


def read_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tags cxr uses, read without the pixel data: ``patient_id`` (PatientID),
    ``study`` (StudyInstanceUID), ``series`` (SeriesInstanceUID), ``sop_instance_uid``,
    ``accession`` (AccessionNumber), ``view`` (ViewPosition), ``modality``, ``body_part``
    (BodyPartExamined), ``rows``, ``columns`` and ``frames`` ("" when absent).
    pydicom's warnings become :class:`DicomWarning`. Raises :class:`ImageReadError`."""
    path = os.fspath(path)
    with _reissued_warnings(path):
        ds = _dcmread(path, None, stop_before_pixels=True)
        keys = {
            "patient_id": "PatientID",
            "study": "StudyInstanceUID",
            "series": "SeriesInstanceUID",
            "sop_instance_uid": "SOPInstanceUID",
            "accession": "AccessionNumber",
            "view": "ViewPosition",
            "modality": "Modality",
            "body_part": "BodyPartExamined",
            "rows": "Rows",
            "columns": "Columns",
            "frames": "NumberOfFrames",
        }
        return {name: _text(ds, keyword) for name, keyword in keys.items()}


def read_dicom(
    path: str, data: bytes | None = None, policy: DicomPolicy | None = None
) -> np.ndarray:
    """Decode a DICOM file (or ``data``, named ``path`` in errors) to float32 ``(H, W)``
    in ``[0, 1]`` (see :func:`cxr.images.read_gray`), under ``policy`` (default: the
    process-wide one). Raises :class:`ImageReadError`."""
    policy = policy or _current
    notes: list[str] = []
    with _reissued_warnings(path):
        out = _decode(path, data, policy, notes)
    for note in notes:
        warnings.warn(f"{path}: {note}", DicomWarning, stacklevel=3)
    return out


def _decode(path: str, data: bytes | None, policy: DicomPolicy, notes: list[str]) -> np.ndarray:
    (_, _, apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array) = (
        pydicom_modules()
    )
    ds = _dcmread(path, data)
    if not policy.any_modality:
        problem = modality_problem(_text(ds, "Modality"), _text(ds, "BodyPartExamined"))
        if problem:
            raise ImageReadError(
                path,
                "wrong-modality",
                f"{problem}; cxr models read chest radiographs (pass --allow-any-modality, "
                "or any_modality=True, to decode it anyway)",
            )
    if not any(k in ds for k in _PIXEL_TAGS):
        raise ImageReadError(path, "unreadable", "DICOM has no pixel data")
    _set_transfer_syntax(ds)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed and get_decoder is not None:
        try:
            decoder = get_decoder(syntax)
            missing = "" if decoder.is_available else "; ".join(decoder.missing_dependencies)
        except NotImplementedError:
            missing = "no decoder exists in pydicom"
        if missing:
            detail = (
                f"transfer syntax {syntax.name} ({syntax}) needs a pydicom decoding plugin "
                "that is not installed (cxr installs pylibjpeg with pylibjpeg-libjpeg, "
                f"pylibjpeg-openjpeg and pylibjpeg-rle, and pyjpegls; reinstall cxr): {missing}"
            )
            raise ImageReadError(path, "unreadable", detail)
    frames_text = _text(ds, "NumberOfFrames") or "1"
    try:
        frames = int(float(frames_text))
    except ValueError:
        raise ImageReadError(
            path, "unreadable", f"NumberOfFrames is {frames_text!r}, not a number"
        ) from None
    if frames > 1:
        if policy.multiframe == "refuse":
            raise ImageReadError(
                path,
                "unsupported",
                f"multi-frame DICOM ({frames} frames); cxr reads single images (--multiframe "
                "first, or multiframe='first', uses the first frame)",
            )
        notes.append(f"multi-frame DICOM ({frames} frames): only the first frame is used")
    try:
        photometric = _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"
        if frames > 1 and pixel_array is not None:
            arr = pixel_array(ds, index=0)  # decodes the first frame only
        else:
            arr = ds.pixel_array
            if frames > 1:
                arr = arr[0]
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim == 3:  # colour (pydicom converts YBR to RGB): luminance
            x = arr[..., :3].astype(np.float64) @ LUMA.astype(np.float64)
        else:
            x = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float64)
    except ImageReadError:
        raise
    except Exception as err:
        raise _dicom_error(path, err, syntax) from None
    if x.ndim != 2 or x.size == 0:
        raise ImageReadError(path, "unreadable", f"DICOM pixel array has shape {x.shape}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageReadError(path, "unreadable", "DICOM pixel data holds non-finite values")
    out = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def _dicom_error(path: str, err: Exception, syntax: Any = None) -> ImageReadError:
    message = str(err)
    text = f"{type(err).__name__}: {' '.join(message.split())}"
    if isinstance(err, EOFError) or "less than expected" in message or "truncat" in message:
        return ImageReadError(path, "truncated", text)
    if syntax is not None and message.startswith("Unable to decode"):  # every plugin failed
        lines = [" ".join(line.split()) for line in message.splitlines()[1:] if line.strip()]
        return ImageReadError(
            path,
            "unreadable",
            f"the {syntax.name} pixel data cannot be decoded (damaged, or not as the standard "
            f"says): {'; '.join(lines)}",
        )
    return ImageReadError(path, "unreadable", text)
