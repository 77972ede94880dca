"""cxr.imagefile: what the PNG/JPEG and the DICOM decoders share, below both of them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cxr.errors import CxrError
from cxr.imagefile import LUMA, REASONS, ImageReadError, pydicom_modules


def test_image_read_error_names_file_reason_and_detail():
    err = ImageReadError("a/b.png", "truncated", "PNG cut short")
    assert str(err) == "a/b.png: truncated: PNG cut short"
    assert (err.path, err.reason, err.detail) == ("a/b.png", "truncated", "PNG cut short")
    assert isinstance(err, CxrError)


def test_an_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="reason must be one of"):
        ImageReadError("x.png", "bad-luck", "")
    assert "wrong-modality" in REASONS


def test_the_error_is_the_same_class_where_users_import_it():
    from cxr.dicom import ImageReadError as from_dicom
    from cxr.images import ImageReadError as from_images

    assert from_images is ImageReadError and from_dicom is ImageReadError


def test_luma_weights_are_itu_601_and_sum_to_one():
    assert LUMA.dtype == np.float32 and LUMA.shape == (3,)
    np.testing.assert_allclose(LUMA, [0.299, 0.587, 0.114])
    assert abs(float(LUMA.sum()) - 1.0) < 1e-6


def test_pydicom_is_imported_once_and_only_when_asked():
    code = (
        "import sys, cxr.images, cxr.dicom; assert 'pydicom' not in sys.modules; "
        "from cxr.imagefile import pydicom_modules as p; m = p(); assert m is p(); "
        "assert m[0].__name__ == 'pydicom' and 'pydicom' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(pydicom_modules()) == 7


def test_dicom_does_not_import_images():
    code = "import sys, cxr.dicom; assert 'cxr.images' not in sys.modules, 'cxr.images'"
    subprocess.run([sys.executable, "-c", code], check=True)
