"""Inputs for the tests of cxr.dicomout: a source DX image, results, and dciodvfy.

dciodvfy (Debian's dicom3tools) validates every object cxr writes. Without it the tests
that use it fail, saying to run ``make dicom3tools``; ``CXR_SKIP_DCIODVFY=1`` skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from cxr.dicomout import ImageResult

STUDY_UID = "1.2.826.0.1.3680043.8.498.11111111111111111111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.22222222222222222222"
SOP_UID = "1.2.826.0.1.3680043.8.498.33333333333333333333"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "My Own Finding")
PROBS = np.array([0.125, 0.8125, 0.42, 0.7200000286102295, 0.05], np.float32)
THRESHOLDS = {"Atelectasis": 0.3, "Cardiomegaly": 0.5, "Effusion": 0.42, "Nodule": 0.76}


def source_dx(sop_uid: str = SOP_UID, size: int = 64) -> Dataset:
    """A small DX image (for presentation), uint16 MONOCHROME2 (size, size), with the
    patient, study and series attributes a modality writes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientName = "Phantom^Chest"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 3
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Manufacturer = "cxr tests"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:size, 0:size]
    ds.PixelData = ((xx + yy) * 4000 // (2 * size)).astype(np.uint16).tobytes()
    return ds


def result(
    not_chest: bool | None = False, sha: str = SHA_A, probs: np.ndarray = PROBS
) -> ImageResult:
    return ImageResult.from_prediction(
        LABELS,
        probs,
        THRESHOLDS,
        not_chest=not_chest,
        model_name="cxr-densenet121-nih",
        model_version="0.1.0",
        model_sha256=sha,
    )


def overlay(h: int = 64, w: int = 64) -> np.ndarray:
    """A uint8 (h, w, 3) heatmap-like RGB image: red rising to the right, blue down."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 0 + 40, yy * 255 // max(h - 1, 1)], -1)
    return rgb.astype(np.uint8)


def dciodvfy(path: Path) -> list[str]:
    """Run dciodvfy on ``path``; print its output and return the lines (errors and
    warnings). Fails when dciodvfy is missing, unless CXR_SKIP_DCIODVFY=1 (then skips)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CXR_SKIP_DCIODVFY") == "1":
            pytest.skip("dciodvfy not installed (CXR_SKIP_DCIODVFY=1)")
        pytest.fail(
            "dciodvfy (Debian's dicom3tools) is not installed: run `make dicom3tools` "
            "(or set CXR_SKIP_DCIODVFY=1 to skip this test)"
        )
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    print(f"dciodvfy {path.name}:", *lines, sep="\n  ")
    return lines
