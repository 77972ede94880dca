"""Image decoding: every PNG, JPEG or DICOM becomes one grey channel in a defined range.

:func:`read_gray` gives float32 ``(H, W)`` in ``[0, 1]``; :func:`fit_square` makes uint8
``(size, size)`` of it (aspect kept: pad with black or centre-crop); :func:`load_for_cache`
does both, fast; :func:`load_bytes` does the same for an image held in memory (an upload).
Resizing uses Pillow's BILINEAR filter, which Pillow widens when
downscaling, so it is antialiased (like torchvision's ``Resize(antialias=True)``).
Failures raise :class:`ImageReadError` naming the file. Pillow's decompression-bomb guard
stays on and truncated files are refused, never padded.
"""

from __future__ import annotations

import io
import numbers
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.choices import FIT_MODES
from cxr.dicom import DicomPolicy, read_dicom
from cxr.imagefile import LUMA, ImageReadError

__all__ = [
    "FIT_MODES",
    "IMAGE_SUFFIXES",
    "MIN_IMAGE_SIDE",
    "ImageReadError",
    "fit_square",
    "is_dicom",
    "load_bytes",
    "load_for_cache",
    "read_gray",
]


IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

#: The smallest shorter side (pixels) of an image that is fitted into a square larger than
#: it: below ``min(MIN_IMAGE_SIDE, size)``, an image is refused ("too-small") rather than
#: blown up into a flat square. (An image may be as small as the square it fills.)
MIN_IMAGE_SIDE = 64
_RESAMPLE = Image.Resampling.BILINEAR
_PIL_FORMATS = ("PNG", "JPEG")
_MODES_8BIT = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
_MODES_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PathLike = str | os.PathLike[str]


def is_dicom(path: _PathLike) -> bool:
    """True if ``path`` ends in .dcm/.dicom (any case) or has ``b"DICM"`` at byte 128."""
    if Path(path).suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_gray(path: _PathLike, dicom: DicomPolicy | None = None) -> np.ndarray:
    """Decode an image to float32 ``(H, W)`` in ``[0, 1]``, 0 = black.

    8-bit images give ``v / 255``, 16-bit PNGs ``v / 65535``; RGB, RGBA and palette images
    their ITU-R 601 luminance (alpha ignored; a colour JPEG its Y channel). DICOM: modality
    LUT (rescale slope/intercept), then VOI LUT or window centre/width when present, then
    min-max scaling of the result to ``[0, 1]`` (a constant image gives zeros); MONOCHROME1
    is inverted so that dense tissue is bright; colour gives luminance; multi-frame gives
    the first frame (with a warning). ``dicom``: which DICOM files are accepted (modality
    check, multi-frame; :class:`cxr.dicom.DicomPolicy`, default the process-wide one; a
    CT or MR file is refused as ``wrong-modality``). Raises :class:`ImageReadError`.
    """
    path = _check_file(path)
    if is_dicom(path):
        return _read_dicom(path, None, dicom)
    with _open_pil(path) as img:
        _load(img, path, draft_size=img.size)
    return _pil_to_float(img, path)


def fit_square(image: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """``(H, W)`` float in ``[0, 1]`` (outside: clipped) or uint8 -> uint8 ``(size, size)``.

    ``fit="pad"``: scale so the longer side is ``size`` and centre it on black (0);
    ``fit="crop"``: scale so the shorter side is ``size`` and keep the centre. Floats are
    resized as float and rounded (not truncated) once, at the end. Bad size/fit: ValueError.
    """
    size = _check_size_fit(size, fit)
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (H, W) array, got shape {image.shape}")
    if image.dtype == np.uint8:
        return np.array(_fit_pil(Image.fromarray(image), size, fit))
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1] or uint8, got dtype {image.dtype}")
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return _quantise(np.asarray(_fit_pil(pil, size, fit)))


def load_for_cache(
    path: _PathLike, size: int, fit: str = "pad", dicom: DicomPolicy | None = None
) -> np.ndarray:
    """Decode an image and fit it into a square: uint8 ``(size, size)``.

    Same as ``fit_square(read_gray(path), size, fit)`` within one grey level, but faster:
    8-bit images are converted to Pillow's 'L' mode and resized there; 16-bit PNGs and
    DICOMs are resized as float and rounded once. JPEGs are decoded by libjpeg at a reduced
    power-of-two scale (``Image.draft``) whose result is still at least twice the resized
    size in both directions (so only when the target is <= 1/4 of the original side);
    libjpeg's scaled decoding is not bit-exact with a full decode, so at sharp edges
    (burned-in text) a few pixels may differ by more than one level (measured on NIH X-rays
    as JPEG, 1024 -> 224: mean 0.18 levels, 0.6 % of pixels > 1, max 10). ``dicom``: as
    for :func:`read_gray`. Raises :class:`ImageReadError`; a bad size or fit raises
    ValueError.
    """
    size = _check_size_fit(size, fit)
    path = _check_file(path)
    return _load_fitted(path, size, fit, None, dicom=is_dicom(path), policy=dicom)


def load_bytes(
    data: bytes,
    size: int,
    fit: str = "pad",
    name: str = "<bytes>",
    dicom: DicomPolicy | None = None,
) -> np.ndarray:
    """:func:`load_for_cache` of an image held in memory (e.g. an upload): the same pixels
    as for a file of these bytes, and nothing is written to disk.

    The format is decided from the bytes alone (``DICM`` at byte 128: DICOM; otherwise PNG
    or JPEG by their signatures), never from ``name``, which only names the image in
    errors. ``dicom``: as for :func:`read_gray` (a CT or MR upload is refused as
    ``wrong-modality`` by default). Raises :class:`ImageReadError`; a bad size or fit
    raises ValueError.
    """
    size = _check_size_fit(size, fit)
    data = bytes(data)
    if not data:
        raise ImageReadError(name, "empty", "file has zero bytes")
    return _load_fitted(name, size, fit, data, dicom=data[128:132] == b"DICM", policy=dicom)


def _load_fitted(
    path: str,
    size: int,
    fit: str,
    data: bytes | None,
    dicom: bool,
    policy: DicomPolicy | None = None,
) -> np.ndarray:
    """The body of :func:`load_for_cache` / :func:`load_bytes`: decode the file ``path`` (or
    ``data``, named ``path`` in errors) and fit it into a square."""
    if dicom:
        decoded = _read_dicom(path, data, policy)
        _check_side(path, decoded.shape[1], decoded.shape[0], size)
        return fit_square(decoded, size, fit)
    with _open_pil(path, data) as img:
        w, h = img.size
        _check_side(path, w, h, size)
        scale = size / (max(w, h) if fit == "pad" else min(w, h))
        target = (max(1, round(2 * w * scale)), max(1, round(2 * h * scale)))
        box = _load(img, path, draft_size=target, data=data)
    if img.mode not in _MODES_8BIT:
        return fit_square(_pil_to_float(img, path), size, fit)
    gray = img if img.mode == "L" else _to_l(img)
    return np.array(_fit_pil(gray, size, fit, orig_size=(w, h), box=box))


# helpers -------------------------------------------------------------------------------
def _check_side(path: str, width: int, height: int, size: int) -> None:
    least = min(MIN_IMAGE_SIDE, size)
    if min(width, height) < least:
        raise ImageReadError(
            path,
            "too-small",
            f"{width}x{height} pixels; the shorter side must be at least {least} pixels to "
            f"fill a {size}x{size} input (a smaller image would be blown up into a flat square)",
        )


def _check_size_fit(size: int, fit: str) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    return int(size)


def _check_file(path: _PathLike) -> str:
    """Return ``path`` as str; raise ImageReadError if it is missing, empty or no file."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        detail = "a symbolic link to a missing file" if os.path.islink(path) else "no such file"
        raise ImageReadError(path, "missing", detail) from None
    except OSError as err:
        raise ImageReadError(path, "unreadable", f"cannot stat: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket, device or folder"
        raise ImageReadError(path, "unreadable", f"not a regular file ({kind})")
    if st.st_size == 0:
        raise ImageReadError(path, "empty", "file has zero bytes")
    return path


@contextmanager
def _open_pil(path: str, data: bytes | None = None) -> Iterator[Image.Image]:
    """Open a PNG/JPEG (the file ``path``, or ``data`` when given) with the
    decompression-bomb warning turned into an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path if data is None else io.BytesIO(data), formats=_PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, "too-large", str(err)) from None
    except FileNotFoundError:
        detail = "a symbolic link to a missing file" if os.path.islink(path) else "no such file"
        raise ImageReadError(path, "missing", detail) from None
    except UnidentifiedImageError:
        kind, complete = _signature(path, data)
        if kind is None:
            raise ImageReadError(path, "unsupported", "not a PNG or JPEG image") from None
        if not complete:
            raise ImageReadError(path, "truncated", f"{kind} cut short in its header") from None
        raise ImageReadError(path, "unreadable", f"corrupt {kind} header") from None
    except Exception as err:
        raise _decode_error(path, err, data) from None
    with img:
        yield img


def _load(
    img: Image.Image, path: str, draft_size: tuple[int, int], data: bytes | None = None
) -> tuple[float, ...] | None:
    """Decode fully; JPEGs at the smallest power-of-two scale >= ``draft_size``.

    Returns the box of ``img`` that holds the whole original image (None = all of it).
    """
    try:
        drafted = img.draft("L", draft_size) if img.format == "JPEG" else None
        img.load()
    except Exception as err:
        raise _decode_error(path, err, data) from None
    return drafted[1] if drafted else None


def _decode_error(path: str, err: Exception, data: bytes | None = None) -> ImageReadError:
    text = f"{type(err).__name__}: {err}"
    kind, complete = _signature(path, data)
    truncated = "truncated" in str(err).lower() or (kind is not None and not complete)
    return ImageReadError(path, "truncated" if truncated else "unreadable", text)


def _signature(path: str, data: bytes | None = None) -> tuple[str | None, bool]:
    """("PNG" | "JPEG" | None by magic bytes, whether the file (or ``data``) ends with
    IEND / EOI)."""
    if data is not None:
        head, tail = data[:8], data[-16:].rstrip(b"\0")
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                f.seek(max(0, os.path.getsize(path) - 16))
                tail = f.read().rstrip(b"\0")
        except OSError:
            return None, True
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", tail.endswith(b"IEND\xaeB`\x82")
    if head.startswith(b"\xff\xd8"):
        return "JPEG", tail.endswith(b"\xff\xd9")
    return None, True


def _to_l(img: Image.Image) -> Image.Image:
    """8-bit modes to 'L' (Pillow's ITU-R 601 luminance, rounded; alpha dropped)."""
    if img.mode in ("CMYK", "YCbCr"):
        img = img.convert("RGB")
    return img.convert("L")


def _pil_to_float(img: Image.Image, path: str) -> np.ndarray:
    mode = img.mode
    if mode in _MODES_16BIT:
        return np.clip(np.asarray(img, dtype=np.float32) / np.float32(65535.0), 0, 1)
    if mode not in _MODES_8BIT:
        raise ImageReadError(path, "unsupported", f"Pillow mode {mode!r} is not supported")
    if mode in ("L", "1", "LA"):
        gray = img if mode == "L" else img.convert("L")
        return np.asarray(gray).astype(np.float32) / np.float32(255.0)
    rgb = np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.float32)
    return (rgb @ (LUMA / np.float32(255.0))).astype(np.float32)


def _fit_pil(
    img: Image.Image,
    size: int,
    fit: str,
    orig_size: tuple[int, int] | None = None,
    box: tuple[float, ...] | None = None,
) -> Image.Image:
    """Resize an 'L' or 'F' image into ``(size, size)`` of the same mode.

    The geometry follows ``orig_size`` (default: ``img.size``); ``box`` is the region of
    ``img`` that holds the whole original (a JPEG decoded at a reduced scale).
    """
    w, h = orig_size or img.size
    x0, y0, x1, y1 = box or (0, 0, img.width, img.height)
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        src = (x0 + left * sx, y0 + top * sy, x0 + (left + side) * sx, y0 + (top + side) * sy)
        return img.resize((size, size), _RESAMPLE, box=src)
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((new_w, new_h), _RESAMPLE, box=(x0, y0, x1, y1))
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def _quantise(x: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8, rounded; NaN -> 0."""
    return np.clip(np.rint(np.nan_to_num(x) * 255.0), 0, 255).astype(np.uint8)


def _read_dicom(
    path: str, data: bytes | None = None, policy: DicomPolicy | None = None
) -> np.ndarray:
    """The DICOM branch: :func:`cxr.dicom.read_dicom` (pydicom is imported on the first
    DICOM)."""
    return read_dicom(path, data, policy)
