"""Plain label CSV reader, including the round trip of LabelTable.save_csv."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.datasets import DatasetError, NoPatientColumnWarning, read_csv_table, read_nih
from cxr.table import LabelTable

COURSE_CSV = (
    "Image,Atelectasis,Cardiomegaly,Consolidation,Edema,Effusion,Emphysema,Fibrosis,"
    "Hernia,Infiltration,Mass,Nodule,Pleural_Thickening,Pneumonia,Pneumothorax,PatientId\n"
    "00008270_015.png,0,0,0,0,0,0,0,0,0,0,0,0,0,0,8270\n"
    "00029855_001.png,1,0,0,0,1,0,0,0,1,0,0,0,0,0,29855\n"
    "00001297_000.png,0,0,0,0,0,0,0,0,0,0,0,1,0,0,1297\n"
    "00012359_002.png,0,0,0,0,0,0,0,0,0,0,0,0,0,0,12359\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_course_layout(tmp_path):
    csv = write(tmp_path / "train-small.csv", COURSE_CSV)
    table = read_csv_table(csv)
    assert len(table) == 4 and len(table.pathologies) == 14
    assert table.pathologies[0] == "Atelectasis" and "PatientId" not in table.pathologies
    assert table.meta["patient_id"].tolist() == ["8270", "29855", "1297", "12359"]
    assert table.paths[0] == str(tmp_path / "00008270_015.png")
    assert table.meta["view"].tolist() == [""] * 4 and table.meta["split"].tolist() == [""] * 4
    names = list(table.pathologies)
    assert table.labels[1, names.index("Effusion")] == 1
    assert table.labels[2].tolist().count(1.0) == 1
    assert table.labels.dtype == np.float32


def test_images_subfolder_fallback_and_image_root(tmp_path):
    csv = write(tmp_path / "labels.csv", COURSE_CSV)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "00008270_015.png").write_bytes(b"")
    assert read_csv_table(csv).paths[0] == str(tmp_path / "images" / "00008270_015.png")
    other = tmp_path / "elsewhere"
    assert read_csv_table(csv, image_root=other).paths[1] == str(other / "00029855_001.png")
    # A file found beside the CSV wins over images/.
    (tmp_path / "00008270_015.png").write_bytes(b"")
    assert read_csv_table(csv).paths[0] == str(tmp_path / "00008270_015.png")


def test_absolute_and_windows_paths(tmp_path):
    csv = write(
        tmp_path / "t.csv",
        "path,Mass,patient\n/data/x/a.png,1,p1\nsub\\b.png,0,p2\n",
    )
    table = read_csv_table(csv)
    assert table.paths == ["/data/x/a.png", str(tmp_path / "sub" / "b.png")]


def test_round_trip_of_saved_tables(tmp_path):
    labels = np.array([[1, 0, np.nan], [0, np.nan, 1], [np.nan, 1, 0]], dtype=np.float32)
    original = LabelTable.from_columns(
        paths=[str(tmp_path / "img" / f"{i}.png") for i in range(3)],
        patient_ids=["007", "8", "8"],
        labels=labels,
        pathologies=("Effusion", "Pleural_Thickening", "Lung Opacity"),
        views=["PA", "AP", ""],
        splits=["train", "", "test"],
    )
    saved = original.save_csv(tmp_path / "out" / "table.csv")
    back = read_csv_table(saved)
    pd.testing.assert_frame_equal(back.meta, original.meta)
    np.testing.assert_array_equal(back.labels, original.labels)
    assert back.pathologies == original.pathologies


def test_round_trip_of_real_nih_sample(shared_datasets, tmp_path):
    original = read_nih(shared_datasets / "nih14-sample")
    back = read_csv_table(original.save_csv(tmp_path / "nih.csv"))
    pd.testing.assert_frame_equal(back.meta, original.meta)
    np.testing.assert_array_equal(back.labels, original.labels)
    assert back.pathologies == original.pathologies


def test_column_detection_is_case_and_space_insensitive(tmp_path):
    csv = write(
        tmp_path / "t.csv",
        "FILE_NAME,Patient ID,View Position,Split,pleural effusion,PNEUMONIA\n"
        "a.png,1,PA,train,1,\nb.png,2,AP,test,0.0,1.0\nc.png,3,,test,True,false\n",
    )
    table = read_csv_table(csv)
    assert table.pathologies == ("Effusion", "Pneumonia")
    assert table.meta["patient_id"].tolist() == ["1", "2", "3"]
    assert table.meta["view"].tolist() == ["PA", "AP", ""]
    assert table.meta["split"].tolist() == ["train", "test", "test"]
    np.testing.assert_array_equal(table.labels, [[1, np.nan], [0, 1], [1, 0]])


def test_explicit_columns_and_labels(tmp_path):
    csv = write(
        tmp_path / "t.csv",
        "img_file,subject,Age,Mass,Nodule,note\na.png,s1,58,1,0,x\nb.png,s2,61,0,1,y\n",
    )
    table = read_csv_table(
        csv, image_column="img_file", patient_column="subject", labels=["Mass", "nodule"]
    )
    assert table.pathologies == ("Mass", "Nodule")
    assert table.meta["patient_id"].tolist() == ["s1", "s2"]
    with pytest.raises(DatasetError, match=r"image_column='nope' is not a column"):
        read_csv_table(csv, image_column="nope")
    with pytest.raises(DatasetError, match=r"label column 'Hernia' not found"):
        read_csv_table(csv, image_column="img_file", patient_column="subject", labels=["Hernia"])


def test_non_label_column_is_named(tmp_path):
    csv = write(tmp_path / "t.csv", "Image,Mass,Age,PatientId\na.png,1,0,1\nb.png,0,58,2\n")
    with pytest.raises(DatasetError) as err:
        read_csv_table(csv)
    msg = str(err.value)
    assert "column 'Age' holds '58'" in msg and "line 3" in msg and "labels=" in msg


@pytest.mark.parametrize("value", ["-1", "2", "yes", "0.5"])
def test_bad_label_values(tmp_path, value):
    csv = write(tmp_path / "t.csv", f"Image,Mass,PatientId\na.png,{value},1\n")
    with pytest.raises(DatasetError, match=rf"line 2: column 'Mass' holds '{value}'"):
        read_csv_table(csv)


def test_no_patient_column_warns_and_uses_images(tmp_path):
    csv = write(tmp_path / "t.csv", "Image,Mass\na/1.png,1\nb/1.png,0\n")
    with pytest.warns(NoPatientColumnWarning, match="own patient"):
        table = read_csv_table(csv)
    assert table.meta["patient_id"].tolist() == ["a/1.png", "b/1.png"]


def test_patient_column_no_warning(tmp_path):
    csv = write(tmp_path / "t.csv", COURSE_CSV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_csv_table(csv)


def test_duplicate_labels_after_canonicalisation(tmp_path):
    csv = write(tmp_path / "t.csv", "Image,Effusion,Pleural Effusion,patient\na.png,1,1,1\n")
    with pytest.raises(DatasetError, match=r"t.csv.*'Effusion' and 'Pleural Effusion' both mean"):
        read_csv_table(csv)
    csv = write(tmp_path / "u.csv", "Image,Mass,Mass,patient\na.png,1,1,1\n")
    with pytest.raises(DatasetError, match="'Mass' appears more than once"):
        read_csv_table(csv)


def test_missing_or_ambiguous_image_column(tmp_path):
    csv = write(tmp_path / "t.csv", "name,Mass\na.png,1\n")
    with pytest.raises(DatasetError, match="no image column.*image_column="):
        read_csv_table(csv)
    csv = write(tmp_path / "u.csv", "Image,Path,Mass\na.png,b.png,1\n")
    with pytest.raises(DatasetError, match=r"\['Image', 'Path'\] could each be the image column"):
        read_csv_table(csv)


def test_empty_cells_in_key_columns(tmp_path):
    csv = write(tmp_path / "t.csv", "Image,Mass,patient\na.png,1,p\n,0,q\n")
    with pytest.raises(DatasetError, match="line 3: image column 'Image' is empty"):
        read_csv_table(csv)
    csv = write(tmp_path / "u.csv", "Image,Mass,patient\na.png,1,p\nb.png,0,\n")
    with pytest.raises(DatasetError, match="line 3: patient column 'patient' is empty"):
        read_csv_table(csv)


def test_trailing_comma_and_unreadable_files(tmp_path):
    csv = write(tmp_path / "t.csv", "Image,Mass,patient,\na.png,1,p,\n")
    assert read_csv_table(csv).pathologies == ("Mass",)
    with pytest.raises(DatasetError, match="is empty"):
        read_csv_table(write(tmp_path / "e.csv", ""))
    with pytest.raises(DatasetError, match="does not exist"):
        read_csv_table(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="is a folder"):
        read_csv_table(tmp_path)


def test_paths_are_absolute_strings(tmp_path, monkeypatch):
    write(tmp_path / "t.csv", COURSE_CSV)
    monkeypatch.chdir(tmp_path)
    table = read_csv_table("t.csv")
    assert all(isinstance(p, str) and os.path.isabs(p) for p in table.paths)
    assert table.source == str(tmp_path / "t.csv")


@pytest.mark.parametrize("second", ["b.png,0,p2", "a.png,1,p1", "a.png,0,p1", "./a.png,1,p1"])
def test_an_image_listed_twice_is_refused_naming_both_lines(tmp_path, second):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"Image,Effusion,PatientId\na.png,1,p1\nc.png,0,p3\n{second}\n")
    if second.startswith("b.png"):
        assert len(read_csv_table(csv)) == 3
        return
    with pytest.raises(DatasetError, match=r"lines 2 and 4: image .*a\.png appears more than once"):
        read_csv_table(csv)


@pytest.mark.parametrize("climbing", ["../../etc/passwd", "images/../../x.png", "..\\x.png"])
def test_paths_climbing_out_of_the_dataset_folder_are_refused(tmp_path, climbing):
    folder = tmp_path / "data"
    csv = write(folder / "labels.csv", f"image,patient,Effusion\na.png,p1,1\n{climbing},p2,0\n")
    with pytest.raises(DatasetError) as err:
        read_csv_table(csv)
    message = str(err.value)
    assert "line 3" in message and "climbs out of the dataset folder" in message
    assert "--allow-outside-paths" in message
    assert "exist" not in message  # says nothing about the file it points at
    table = read_csv_table(csv, allow_outside=True)
    assert table.paths[1] == os.path.normpath(folder / climbing.replace("\\", "/"))


def test_inner_dots_and_absolute_paths_stay_allowed(tmp_path):
    folder = tmp_path / "data"
    csv = write(
        folder / "labels.csv",
        f"image,patient,Effusion\nimages/../a.png,p1,1\n{tmp_path}/b.png,p2,0\n",
    )
    table = read_csv_table(csv)
    assert table.paths == [str(folder / "a.png"), str(tmp_path / "b.png")]


def test_cli_flag_allows_outside_paths(tmp_path, capsys):
    from cxr.cli import main

    csv = write(tmp_path / "d" / "labels.csv", "image,patient,Effusion\n../a.png,p1,1\n")
    assert main(["data", "inspect", str(csv)]) == 2
    assert "climbs out of the dataset folder" in capsys.readouterr().err
    assert main(["data", "inspect", str(csv), "--allow-outside-paths"]) == 0
