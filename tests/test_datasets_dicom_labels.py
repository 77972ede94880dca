"""cxr.datasets.dicom_labels: a labels CSV joined to the files of a DICOM folder."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cxr.datasets.common import DatasetError
from cxr.datasets.dicom_labels import DicomFolderWarning, find_labels_csv, join_labels


def _tags() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "relpath": ["a/1.dcm", "a/2.dcm", "b/3.dcm"],
            "sop_instance_uid": ["1.1", "1.2", "1.3"],
            "accession": ["ACC1", "ACC1", "ACC2"],
        }
    )


def _csv(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return str(path)


def test_join_by_accession_applies_to_every_image_of_the_study(tmp_path):
    csv = _csv(tmp_path, "AccessionNumber,Effusion\nACC1,1\nACC2,0\n")
    values, names = join_labels(_tags(), str(tmp_path), csv, None, None)
    assert names == ("Effusion",) and values.dtype == np.float32
    assert values[:, 0].tolist() == [1.0, 1.0, 0.0]


def test_join_by_file_name_and_unknown_rows_warn(tmp_path):
    csv = _csv(tmp_path, "image,Effusion\n2.dcm,1\nmissing.dcm,0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, _ = join_labels(_tags(), str(tmp_path), csv, "file", None)
    assert np.isnan(values[0, 0]) and values[1, 0] == 1.0
    texts = [str(w.message) for w in caught if issubclass(w.category, DicomFolderWarning)]
    assert any("1 row(s) match no DICOM file" in t for t in texts)
    assert any("2 DICOM file(s) have no row" in t for t in texts)


def test_a_repeated_key_is_refused_with_its_lines(tmp_path):
    csv = _csv(tmp_path, "SOPInstanceUID,Effusion\n1.1,1\n1.1,0\n")
    with pytest.raises(DatasetError, match="lines 2 and 3"):
        join_labels(_tags(), str(tmp_path), csv, None, None)


def test_the_labels_csv_is_found_or_must_be_named(tmp_path):
    assert find_labels_csv(str(tmp_path), None) is None
    one = _csv(tmp_path, "x\n")
    assert find_labels_csv(str(tmp_path), None) == one
    (tmp_path / "other.csv").write_text("y\n")
    with pytest.raises(DatasetError, match="holds 2 CSVs"):
        find_labels_csv(str(tmp_path), None)
    with pytest.raises(DatasetError, match="does not exist"):
        find_labels_csv(str(tmp_path), tmp_path / "nope.csv")
