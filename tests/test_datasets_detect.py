"""Format detection, load_dataset / load_datasets and their option checks."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cxr.datasets import (
    FORMATS,
    DatasetError,
    detect_format,
    load_dataset,
    load_datasets,
    reader_options,
)

NIH = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n"
)
CHEX = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP"
    + ",0.0" * 13
    + ",1.0\n"
)
PLAIN = "Image,Mass,PatientId\na.png,1,1\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "files,source,expected",
    [
        ({"Data_Entry_2017.csv": NIH}, "Data_Entry_2017.csv", "nih"),
        ({"Data_Entry_2017_v2020.csv.gz": NIH}, "Data_Entry_2017_v2020.csv.gz", "nih"),
        ({"Data_Entry_2017.csv": NIH}, ".", "nih"),
        ({"Data_Entry_2017_v2020.csv.gz": NIH, "other.csv": PLAIN}, ".", "nih"),
        ({"subset.csv": NIH}, "subset.csv", "nih"),  # by header
        ({"subset.csv": NIH, "other.csv": PLAIN}, ".", "nih"),
        ({"valid.csv": CHEX}, "valid.csv", "chexpert"),
        ({"train.csv": CHEX, "valid.csv": CHEX}, ".", "chexpert"),
        ({"train.csv": CHEX}, ".", "chexpert"),
        ({"mine.csv": CHEX}, "mine.csv", "chexpert"),
        ({"test_list.txt": "00000001_000.png\n"}, "test_list.txt", "list"),
        ({"labels.csv": PLAIN}, "labels.csv", "csv"),
        ({"labels.csv": PLAIN}, ".", "csv"),
        ({"train.csv": PLAIN}, ".", "csv"),  # train.csv that is not CheXpert
        ({"labels.csv": PLAIN, "images/a.png": None}, ".", "csv"),
        ({"NORMAL/a.png": None, "PNEUMONIA/b.jpeg": None}, ".", "folders"),
        ({"train/NORMAL/a.png": None, "test/PNEUMONIA/b.JPG": None}, ".", "folders"),
        ({"a.csv": PLAIN, "b.csv": PLAIN, "Mass/x.dcm": None}, ".", "folders"),
    ],
)
def test_detection(tmp_path, files, source, expected):
    for rel, text in files.items():
        if text is None:
            touch(tmp_path / rel)
        else:
            write(tmp_path / rel, text)
    assert detect_format(tmp_path / source) == expected
    assert detect_format(str(tmp_path / source)) == expected


@pytest.mark.parametrize(
    "files,match",
    [
        ({}, r"cannot tell the format of the folder"),
        ({"a.csv": PLAIN, "b.csv": PLAIN}, r"found CSVs \['a.csv', 'b.csv'\]"),
        ({"a.csv": PLAIN, "b.csv": PLAIN, "images/x.png": None}, "found CSVs"),
        ({"flat.png": None}, "subfolders holding images"),
    ],
)
def test_undetectable_folders(tmp_path, files, match):
    for rel, text in files.items():
        touch(tmp_path / rel) if text is None else write(tmp_path / rel, text)
    with pytest.raises(DatasetError, match=match) as err:
        detect_format(tmp_path)
    msg = str(err.value)
    assert "Data_Entry" in msg and "format=" in msg


def test_undetectable_files(tmp_path):
    touch(tmp_path / "x.json")
    with pytest.raises(DatasetError, match="cannot tell the format of the file"):
        detect_format(tmp_path / "x.json")
    with pytest.raises(DatasetError, match="does not exist"):
        detect_format(tmp_path / "missing")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing", format="csv")


def test_load_each_format(tmp_path):
    write(tmp_path / "nih" / "Data_Entry_2017.csv", NIH)
    write(tmp_path / "chex" / "CheXpert-v1.0-small" / "valid.csv", CHEX)
    write(tmp_path / "plain" / "labels.csv", PLAIN)
    touch(tmp_path / "folders" / "Mass" / "a.png")
    write(tmp_path / "list.txt", "00000001_000.png\n")
    assert load_dataset(tmp_path / "nih").pathologies[0] == "Atelectasis"
    assert load_dataset(tmp_path / "chex" / "CheXpert-v1.0-small").pathologies[0] == "No Finding"
    assert load_dataset(tmp_path / "plain").pathologies == ("Mass",)
    assert load_dataset(tmp_path / "folders").pathologies == ("Mass",)
    assert load_dataset(tmp_path / "list.txt").labels.shape == (1, 0)


def test_format_override(tmp_path):
    # A CheXpert-looking CSV read as a plain CSV, and an NIH header read as csv.
    chex = write(tmp_path / "c" / "valid.csv", CHEX)
    assert detect_format(chex) == "chexpert"
    with pytest.raises(DatasetError, match="'Sex' holds 'Male'"):
        load_dataset(chex, format="csv")
    table = load_dataset(
        chex, format="CSV", labels=["Support Devices", "Pleural Effusion"], patient_column="Sex"
    )
    assert table.pathologies == ("Support Devices", "Effusion")
    # A folder of class folders holding a single CSV: detected as csv, overridable.
    write(tmp_path / "f" / "labels.csv", PLAIN)
    touch(tmp_path / "f" / "Mass" / "a.png")
    assert detect_format(tmp_path / "f") == "csv"
    assert load_dataset(tmp_path / "f", format="folders").pathologies == ("Mass",)
    with pytest.raises(ValueError, match=r"format='jpeg' is not one of \['nih', 'chexpert'"):
        load_dataset(tmp_path / "f", format="jpeg")
    with pytest.raises(DatasetError, match="holds no DICOM files"):
        load_dataset(tmp_path / "f", format="dicom")


def test_csv_format_on_folder_with_many_csvs(tmp_path):
    write(tmp_path / "a.csv", PLAIN)
    write(tmp_path / "b.csv", PLAIN)
    with pytest.raises(DatasetError, match="exactly one CSV"):
        load_dataset(tmp_path, format="csv")


def test_unknown_option_names_accepted_ones(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", NIH)
    with pytest.raises(TypeError, match=r"\['uncertain'\].*'nih'.*\['official_split'\]"):
        load_dataset(tmp_path, uncertain="zeros")
    assert load_dataset(tmp_path, official_split=False).meta["split"].tolist() == [""]
    assert reader_options("chexpert") == (
        "split",
        "uncertain",
        "blank",
        "frontal_only",
        "allow_outside",
    )
    assert set(FORMATS) == {"nih", "chexpert", "csv", "folders", "list", "dicom"}


def test_load_datasets_merges(tmp_path):
    write(tmp_path / "nih" / "Data_Entry_2017.csv", NIH)
    write(tmp_path / "CheXpert-v1.0-small" / "valid.csv", CHEX)
    merged = load_datasets(
        [
            tmp_path / "nih",
            (tmp_path / "CheXpert-v1.0-small", {"uncertain": "zeros", "format": "chexpert"}),
        ]
    )
    assert len(merged) == 2
    names = list(merged.pathologies)
    assert np.isnan(merged.labels[0, names.index("Support Devices")])
    assert np.isnan(merged.labels[1, names.index("Hernia")])
    assert merged.labels[0, names.index("Cardiomegaly")] == 1
    assert merged.labels[1, names.index("Cardiomegaly")] == 0
    with pytest.raises(ValueError, match="at least one"):
        load_datasets([])


def test_real_datasets_detected(shared_datasets):
    assert detect_format(shared_datasets / "nih14-sample") == "nih"
    assert detect_format(shared_datasets / "nih14-metadata") == "nih"
    assert (
        detect_format(shared_datasets / "nih14-metadata" / "Data_Entry_2017_v2020.csv.gz") == "nih"
    )
    assert detect_format(shared_datasets / "pediatric-pneumonia") == "folders"
    assert detect_format(shared_datasets / "nih14-sample" / "peer_predictions.csv") == "csv"
    assert len(load_dataset(shared_datasets / "pediatric-pneumonia")) == 3637


def test_cxr_saved_split_named_train_csv_is_not_chexpert(tmp_path):
    """cxr's own split files are called train.csv/valid.csv too, with CheXpert-like labels."""
    import numpy as np

    from cxr.datasets import detect_format, load_dataset
    from cxr.labels import CHEXPERT14_LABELS
    from cxr.table import LabelTable

    t = LabelTable.from_columns(["/x/a.png"], ["p1"], np.ones((1, 14)), CHEXPERT14_LABELS)
    t.save_csv(tmp_path / "train.csv")
    assert detect_format(tmp_path / "train.csv") == "csv"
    back = load_dataset(tmp_path / "train.csv")
    assert back.pathologies == CHEXPERT14_LABELS and back.paths == ["/x/a.png"]


def test_image_lists_refuse_names_climbing_out_of_their_folder(tmp_path):
    from cxr.datasets import DatasetError, read_image_list

    listing = tmp_path / "list.txt"
    listing.write_text("a/x.png\n../secret/y.png\n")
    with pytest.raises(DatasetError, match=r"list\.txt, line 2: image path .* climbs out"):
        read_image_list(listing)
    assert len(read_image_list(listing, allow_outside=True)) == 2
