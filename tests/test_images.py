"""Tests of cxr.images: decoding to grey, fitting into a square, errors.

All test images are made here in tmp_path; one test reads the real NIH images from the
shared datasets folder (skipped when absent).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, JpegImagePlugin
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from cxr.choices import FIT_MODES
from cxr.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    fit_square,
    is_dicom,
    load_for_cache,
    read_gray,
)
from dicom_files import write_dicom

RNG = np.random.default_rng(0)
LUMA = np.array([0.299, 0.587, 0.114])


# helpers -------------------------------------------------------------------------------
def smooth(h: int, w: int, lo: float = 10, hi: float = 245) -> np.ndarray:
    """A smooth float64 test picture (gradient plus a soft blob) in [lo, hi]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    z = 0.6 * x + 0.3 * y + 0.4 * np.exp(-((x - 0.5) ** 2 + (y - 0.4) ** 2) / 0.05)
    return lo + (hi - lo) * (z - z.min()) / (z.max() - z.min())


def save(path: Path, arr: np.ndarray, **kwargs) -> Path:
    Image.fromarray(arr).save(path, **kwargs)
    return path


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def reason_of(path: Path, func=read_gray) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        func(path) if func is read_gray else func(path, 32)
    assert str(path) in str(info.value)  # errors name the file
    return info.value


# constants -----------------------------------------------------------------------------
def test_constants():
    assert {".png", ".jpg", ".jpeg", ".dcm", ".dicom"} == IMAGE_SUFFIXES
    assert FIT_MODES == ("pad", "crop")
    # the guards stay on
    assert int(1024 * 1024 * 1024 // 4 // 3) == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# read_gray: PNG / JPEG -----------------------------------------------------------------
def test_png_8bit_exact(tmp_path):
    arr = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    arr[0, :2] = (0, 255)
    out = read_gray(save(tmp_path / "a.png", arr))
    assert out.dtype == np.float32 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, arr.astype(np.float32) / np.float32(255))
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0
    Image.fromarray(arr).save(tmp_path / "png-named.jpg", format="PNG")  # content decides
    np.testing.assert_array_equal(read_gray(tmp_path / "png-named.jpg"), out)


def test_png_16bit_scaled_by_65535(tmp_path):
    arr = RNG.integers(0, 65536, (16, 24), dtype=np.uint16)
    arr[0, :4] = (0, 65535, 256, 257)  # 256 and 257 differ: no 8-bit truncation
    path = save(tmp_path / "a16.png", arr)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    out = read_gray(path)
    assert out.dtype == np.float32 and out.shape == (16, 24)
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-7)
    assert out[0, 3] > out[0, 2]


def test_rgb_rgba_palette_give_luminance(tmp_path):
    rgb = RNG.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    expected = rgb @ LUMA / 255
    np.testing.assert_allclose(read_gray(save(tmp_path / "rgb.png", rgb)), expected, atol=1e-6)
    rgba = np.dstack([rgb, RNG.integers(0, 256, (12, 18), dtype=np.uint8)])  # alpha ignored
    np.testing.assert_allclose(read_gray(save(tmp_path / "rgba.png", rgba)), expected, atol=1e-6)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expected_p = np.asarray(pal.convert("RGB")) @ LUMA / 255
    np.testing.assert_allclose(read_gray(tmp_path / "p.png"), expected_p, atol=1e-6)


def test_jpeg_close_to_original(tmp_path):
    gray = smooth(64, 80)
    out = read_gray(save(tmp_path / "g.jpg", gray.round().astype(np.uint8), quality=95))
    assert out.shape == (64, 80) and out.dtype == np.float32
    assert np.abs(out - gray / 255).max() < 4 / 255
    color = np.dstack([gray, gray * 0.8, 255 - gray]).round().astype(np.uint8)
    out = read_gray(save(tmp_path / "c.jpeg", color, quality=95))
    assert np.abs(out - color @ LUMA / 255).max() < 4 / 255


# fit_square ----------------------------------------------------------------------------
@pytest.mark.parametrize("as_float", [False, True])
def test_pad_geometry(as_float):
    white = np.full((100, 200), 255, np.uint8)  # wide: a band of rows 16..47 in 64
    image = white / 255.0 if as_float else white
    out = fit_square(image, 64, "pad")
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert (out[17:47] == 255).all() and (out[:15] == 0).all() and (out[49:] == 0).all()
    tall = fit_square(white.T.copy(), 64, "pad")  # tall: a band of columns
    np.testing.assert_array_equal(tall, out.T)


def test_crop_keeps_the_middle():
    # 4 bands of 50 columns: 50 | 0 | 255 | 200; the crop keeps the middle two
    bands = np.repeat(np.array([50, 0, 255, 200], np.uint8), 50)[None, :].repeat(100, 0)
    out = fit_square(bands, 64, "crop")
    assert out.shape == (64, 64)
    assert (out[:, 1:31] <= 1).all() and (out[:, 33:63] >= 254).all()
    np.testing.assert_array_equal(fit_square(bands.T.copy(), 64, "crop"), out.T)


def test_fit_square_rounds_and_upscales():
    out = fit_square(np.full((10, 10), 101.7 / 255, np.float32), 32)
    assert out.shape == (32, 32) and (out == 102).all()  # rounded, not truncated to 101
    assert (fit_square(np.full((5, 7), 2.0), 16, "crop") == 255).all()  # clipped


@pytest.mark.parametrize("size", [0, -3, 1.5, True, "64", None])
def test_fit_square_bad_size(size):
    with pytest.raises(ValueError, match="positive integer"):
        fit_square(np.zeros((4, 4), np.uint8), size)


def test_fit_square_bad_fit_and_input():
    with pytest.raises(ValueError, match="pad"):
        fit_square(np.zeros((4, 4), np.uint8), 8, "stretch")
    with pytest.raises(ValueError, match="2-D"):
        fit_square(np.zeros((4, 4, 3), np.uint8), 8)
    with pytest.raises(ValueError, match="dtype"):
        fit_square(np.zeros((4, 4), np.int16), 8)
    with pytest.raises(ValueError, match="fit must be one of"):
        load_for_cache("/nonexistent.png", 8, "zoom")  # checked before the file


# load_for_cache == fit_square(read_gray(...)) ------------------------------------------
def _png8(p):
    noisy = smooth(120, 90) + RNG.normal(0, 20, (120, 90))
    return save(p / "a.png", noisy.clip(0, 255).astype(np.uint8))


def _png16(p):
    return save(p / "a16.png", (smooth(90, 130) * 257).astype(np.uint16))


def _rgba(p):
    g = smooth(70, 100)
    return save(p / "a.png", np.dstack([g, 255 - g, g / 2, g]).astype(np.uint8))


def _palette(p):
    g = smooth(70, 100)
    Image.fromarray(np.dstack([g, 255 - g, g / 2]).astype(np.uint8)).quantize(64).save(p / "p.png")
    return p / "p.png"


def _jpeg(p):
    return save(p / "a.jpg", smooth(150, 200).astype(np.uint8), quality=92)


def _jpeg_color(p):
    g = smooth(150, 200)
    return save(p / "c.jpg", np.dstack([g, 255 - g, g / 2]).astype(np.uint8), quality=92)


def _dicom(p):
    return write_dicom(p / "a.dcm", (smooth(100, 80) * 16).astype(np.uint16))


@pytest.mark.parametrize("make", [_png8, _png16, _rgba, _palette, _jpeg, _jpeg_color, _dicom])
@pytest.mark.parametrize("fit", FIT_MODES)
@pytest.mark.parametrize("size", [48, 200])
def test_load_for_cache_matches_read_gray(tmp_path, make, fit, size):
    path = make(tmp_path)
    fast = load_for_cache(path, size, fit)
    assert fast.dtype == np.uint8 and fast.shape == (size, size)
    assert max_diff(fast, fit_square(read_gray(path), size, fit)) <= 1


@pytest.mark.parametrize("fit", FIT_MODES)
def test_load_for_cache_jpeg_draft(tmp_path, monkeypatch, fit):
    path = save(tmp_path / "big.jpg", smooth(1024, 1024).astype(np.uint8), quality=92)
    drafted = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafted.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = load_for_cache(path, 128, fit)
    (requested, decoded_size), *_ = drafted
    assert decoded_size[0] < 1024  # libjpeg decoded at a reduced scale...
    assert min(decoded_size) >= 128  # ...but never below the target
    assert max_diff(fast, fit_square(read_gray(path), 128, fit)) <= 1


# DICOM ---------------------------------------------------------------------------------
def test_dicom_monochrome1_inverted_equals_monochrome2(tmp_path):
    stored = RNG.integers(100, 4000, (20, 24)).astype(np.uint16)
    m2 = read_gray(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2"))
    m1 = read_gray(write_dicom(tmp_path / "m1.dcm", 4095 - stored, "MONOCHROME1"))
    assert m2.dtype == np.float32 and m2.shape == (20, 24)
    assert m2.min() == 0 and m2.max() == 1  # min-max scaled
    np.testing.assert_allclose(m2, (stored - stored.min()) / float(np.ptp(stored)), atol=1e-6)
    np.testing.assert_allclose(m1, m2, atol=1e-6)


def test_dicom_rescale_and_window(tmp_path):
    # stored * 2 - 1024 = [-1024, -24, 76, 176, 1976]; window 76 +- 100
    stored = np.array([[0, 500, 550, 600, 1500]], np.uint16).repeat(2, 0)
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=76,
        WindowWidth=200,
    )
    out = read_gray(path)[0]
    assert out[0] == 0 and out[4] == 1  # outside the window: clipped
    np.testing.assert_allclose(out[1:4], [0, 0.5, 1], atol=0.01)
    path = write_dicom(tmp_path / "n.dcm", stored, WindowCenter=76, WindowWidth=200)
    no_rescale = read_gray(path)
    assert no_rescale[0, 1] == 1  # the same window without the rescale puts 500 above it


def test_dicom_constant_multiframe_and_rgb(tmp_path):
    flat = read_gray(write_dicom(tmp_path / "flat.dcm", np.full((8, 8), 700, np.uint16)))
    assert flat.shape == (8, 8) and (flat == 0).all()
    frames = np.stack([np.tile(np.arange(8, dtype=np.uint16), (6, 1)), np.zeros((6, 8), np.uint16)])
    out = read_gray(write_dicom(tmp_path / "mf.dcm", frames))
    np.testing.assert_allclose(out, frames[0] / 7, atol=1e-6)  # first frame
    rgb = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    lum = rgb @ LUMA
    out = read_gray(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    np.testing.assert_allclose(out, (lum - lum.min()) / np.ptp(lum), atol=1e-5)


def test_is_dicom_by_suffix_or_magic(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4))
    renamed = path.rename(tmp_path / "x.bin")
    assert is_dicom(renamed) and is_dicom("missing.DICOM") and is_dicom(tmp_path / "y.dcm")
    assert not is_dicom(save(tmp_path / "a.png", np.zeros((4, 4), np.uint8)))
    assert read_gray(renamed).shape == (4, 4)  # detected by magic, read as DICOM


def _compressed_dicom(path: Path, syntax, payload: bytes, bits: int = 8) -> Path:
    write_dicom(path, np.zeros((32, 32), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = encapsulate([payload])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_compressed(tmp_path):
    decoders = pytest.importorskip("pydicom.pixels")
    gray = smooth(32, 32).astype(np.uint8)
    ds = pydicom.dcmread(write_dicom(tmp_path / "r.dcm", gray.astype(np.uint16) * 16))
    if decoders.get_encoder(RLELossless).is_available:
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
        np.testing.assert_allclose(read_gray(tmp_path / "rle.dcm"), read_gray(tmp_path / "r.dcm"))
    if decoders.get_decoder(JPEGBaseline8Bit).is_available:
        save(tmp_path / "j.jpg", gray, quality=95)
        payload = (tmp_path / "j.jpg").read_bytes()
        path = _compressed_dicom(tmp_path / "j.dcm", JPEGBaseline8Bit, payload)
        expected = (gray - gray.min()) / float(np.ptp(gray))
        assert np.abs(read_gray(path) - expected).max() < 0.03


def test_dicom_missing_plugin_is_unreadable(tmp_path):
    decoders = pytest.importorskip("pydicom.pixels")
    if decoders.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed")
    payload = b"\xff\xd8\xff\xf7junk\xff\xd9"
    path = _compressed_dicom(tmp_path / "ls.dcm", JPEGLSLossless, payload, bits=16)
    err = reason_of(path)
    assert err.reason == "unreadable"
    assert "JPEG-LS" in err.detail and "plugin" in err.detail and "pylibjpeg" in err.detail


def test_dicom_errors(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.arange(4096, dtype=np.uint16).reshape(64, 64))
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-1000])
    assert reason_of(tmp_path / "cut.dcm").reason == "truncated"
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    err = reason_of(tmp_path / "nopix.dcm")
    assert err.reason == "unreadable" and "pixel data" in err.detail
    (tmp_path / "text.dcm").write_text("not a dicom at all\n" * 20)
    assert reason_of(tmp_path / "text.dcm").reason == "unsupported"


# errors --------------------------------------------------------------------------------
def test_error_format_and_pickle(tmp_path):
    err = ImageReadError(tmp_path / "x.png", "empty", "file has zero bytes")
    assert str(err) == f"{tmp_path / 'x.png'}: empty: file has zero bytes"
    assert err.path == str(tmp_path / "x.png")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.detail) == (err.path, err.reason, err.detail)
    with pytest.raises(ValueError):
        ImageReadError("x", "bad-reason", "")


@pytest.mark.parametrize("func", [read_gray, load_for_cache])
def test_missing_empty_garbage(tmp_path, func):
    assert reason_of(tmp_path / "nope.png", func).reason == "missing"
    (tmp_path / "empty.png").write_bytes(b"")
    assert reason_of(tmp_path / "empty.png", func).reason == "empty"
    (tmp_path / "noise.png").write_bytes(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert reason_of(tmp_path / "noise.png", func).reason in ("unsupported", "unreadable")
    (tmp_path / "text.jpg").write_text("hello, I am not a picture\n" * 30)
    assert reason_of(tmp_path / "text.jpg", func).reason == "unsupported"
    (tmp_path / "dir.png").mkdir()
    assert reason_of(tmp_path / "dir.png", func).reason == "unreadable"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.6, 0.97, 40])
@pytest.mark.parametrize("func", [read_gray, load_for_cache])
def test_truncated(tmp_path, suffix, keep, func):
    full = save(tmp_path / f"full{suffix}", RNG.integers(0, 256, (256, 256), dtype=np.uint8))
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert reason_of(cut, func).reason == "truncated"


def test_corrupt_png_is_unreadable_not_truncated(tmp_path):
    path = save(tmp_path / "a.png", RNG.integers(0, 256, (128, 128), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 200
    data[start : start + 400] = bytes(400)  # zero a stretch of the compressed data
    path.write_bytes(bytes(data))
    assert reason_of(path).reason == "unreadable"


@pytest.mark.parametrize("limit", [1000, 3000])  # 64*64 = 4096 pixels: > 2x and 1x..2x limit
@pytest.mark.parametrize("func", [read_gray, load_for_cache])
def test_decompression_bomb(tmp_path, monkeypatch, limit, func):
    path = save(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters = list(warnings.filters)
    err = reason_of(path, func)
    assert err.reason == "too-large" and "pixels" in err.detail
    assert warnings.filters == filters  # the warning filter does not leak


# the real NIH images -------------------------------------------------------------------
def test_real_nih_images(shared_datasets):
    paths = sorted((shared_datasets / "nih14-fullres" / "images").glob("*.png"))
    if not paths:
        pytest.skip("no NIH images in the shared datasets folder")
    gray = read_gray(paths[0])
    assert gray.shape == (1024, 1024) and gray.dtype == np.float32
    assert 0 <= gray.min() < gray.max() <= 1
    for path in paths:  # some NIH PNGs are RGBA
        out = load_for_cache(path, 224)
        assert out.shape == (224, 224) and out.dtype == np.uint8 and out.std() > 10
    assert max_diff(load_for_cache(paths[0], 224), fit_square(gray, 224)) <= 1


@pytest.mark.parametrize("shape", [(1, 1), (40, 300), (300, 63)])
def test_images_too_small_for_the_input_are_refused_with_the_reason(tmp_path, shape):
    from cxr.images import MIN_IMAGE_SIDE, load_bytes

    path = tmp_path / "tiny.png"
    Image.fromarray(np.full(shape, 128, np.uint8)).save(path)
    with pytest.raises(ImageReadError) as err:
        load_for_cache(path, 224)
    assert err.value.reason == "too-small" and str(path) in str(err.value)
    assert f"{shape[1]}x{shape[0]} pixels" in err.value.detail
    assert f"at least {MIN_IMAGE_SIDE} pixels" in err.value.detail
    with pytest.raises(ImageReadError, match="too-small"):
        load_bytes(path.read_bytes(), 224)


def test_small_images_fill_a_square_no_larger_than_them(tmp_path):
    """A 48 px image fills a 48 px input (phantoms, thumbnails); 1x1 never does."""
    path = tmp_path / "small.png"
    Image.fromarray(np.full((48, 60), 128, np.uint8)).save(path)
    assert load_for_cache(path, 48).shape == (48, 48)
    with pytest.raises(ImageReadError, match="at least 64 pixels to fill a 96x96 input"):
        load_for_cache(path, 96)


def test_small_dicoms_are_refused_too(tmp_path):
    path = tmp_path / "tiny.dcm"
    write_dicom(path, np.zeros((8, 8), np.uint16))
    with pytest.raises(ImageReadError, match="too-small: 8x8 pixels"):
        load_for_cache(path, 224)
