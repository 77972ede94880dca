"""DICOM files written by the tests themselves (no DICOM data is part of the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> Path:
    """Uncompressed DICOM of uint16 (H, W), uint16 (frames, H, W) or uint8 (H, W, 3)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    color = arr.ndim == 3 and arr.shape[-1] == 3
    ds.Rows, ds.Columns = arr.shape[-3:-1] if color else arr.shape[-2:]
    bits = 8 if color else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    if not color and arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.PhotometricInterpretation = photometric
    ds.PixelData = arr.astype(np.uint8 if color else np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
