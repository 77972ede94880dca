"""NIH ChestX-ray14 reader (and the image-list reader for its official split lists)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from cxr.datasets import DatasetError, describe, read_image_list, read_nih
from cxr.labels import NIH14_LABELS

HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
HEADER_2020 = HEADER_2017[:-1]

# (image, findings, follow-up, patient, age, sex, view)
ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
    ("00000075_000.png", "Effusion|Infiltration|Pleural_Thickening", 0, 75, 61, "F", "AP"),
    ("00030805_000.png", "Hernia|Mass|Nodule|Pneumonia", 0, 30805, 39, "M", "PA"),
]

NEEDED = {
    "Infiltration": 91,
    "Nodule": 63,
    "Atelectasis": 61,
    "Consolidation": 59,
    "Effusion": 57,
    "Mass": 48,
    "Pleural_Thickening": 44,
    "Fibrosis": 32,
    "Pneumothorax": 29,
    "Cardiomegaly": 28,
    "Emphysema": 28,
    "Pneumonia": 24,
    "Edema": 13,
    "Hernia": 13,
}


def nih_csv_text(layout: str = "2020", rows=ROWS, trailing_rows: bool = False) -> str:
    """An NIH metadata CSV: ``2017`` = original (trailing comma, ages like 058Y)."""
    lines = [HEADER_2017 if layout == "2017" else HEADER_2020]
    for img, find, fu, pid, age, sex, view in rows:
        age_text = f"{age:03d}Y" if layout == "2017" else str(age)
        line = f"{img},{find},{fu},{pid},{age_text},{sex},{view},2500,2048,0.143,0.143"
        lines.append(line + ("," if trailing_rows else ""))
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


# -- both header layouts, gzip ----------------------------------------------------------
@pytest.mark.parametrize(
    "name,layout,trailing",
    [
        ("Data_Entry_2017.csv", "2017", False),
        ("Data_Entry_2017.csv", "2017", True),
        ("Data_Entry_2017.csv", "2020", False),
        ("Data_Entry_2017.csv", "2020", True),
        ("Data_Entry_2017_v2020.csv", "2020", False),
        ("Data_Entry_2017_v2020.csv.gz", "2020", False),
        ("Data_Entry_2017.csv.gz", "2017", False),
    ],
)
def test_layouts_read_the_same(tmp_path, name, layout, trailing):
    write(tmp_path / name, nih_csv_text(layout, trailing_rows=trailing))
    table = read_nih(tmp_path)
    assert table.pathologies == NIH14_LABELS
    assert len(table) == 5
    assert table.meta["patient_id"].tolist() == ["1", "1", "2", "75", "30805"]
    assert table.meta["view"].tolist() == ["PA", "PA", "PA", "AP", "PA"]
    assert table.meta["split"].tolist() == [""] * 5
    j = {n: i for i, n in enumerate(NIH14_LABELS)}
    y = table.labels
    assert not np.isnan(y).any()
    assert y[0].sum() == 1 and y[0, j["Cardiomegaly"]] == 1
    assert y[1, j["Cardiomegaly"]] == 1 and y[1, j["Emphysema"]] == 1 and y[1].sum() == 2
    assert y[2].sum() == 0  # No Finding
    assert {NIH14_LABELS[k] for k in np.flatnonzero(y[3])} == {
        "Effusion",
        "Infiltration",
        "Pleural_Thickening",
    }
    assert y[4].sum() == 4 and y[4, j["Hernia"]] == 1
    assert table.labels.dtype == np.float32
    # Paths: absolute, default <root>/images/<name> when no image exists.
    assert table.paths[0] == os.path.join(str(tmp_path), "images", "00000001_000.png")
    assert all(os.path.isabs(p) for p in table.paths)


def test_csv_file_as_source_and_str_source(tmp_path):
    csv = write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    a = read_nih(csv)
    b = read_nih(str(tmp_path))
    assert a.paths == b.paths
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.source == str(csv)


def test_prefers_v2020_when_both_present(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text("2017", rows=ROWS[:2]))
    write(tmp_path / "Data_Entry_2017_v2020.csv.gz", nih_csv_text("2020"))
    assert len(read_nih(tmp_path)) == 5


def test_leading_zero_patient_ids_are_stripped(tmp_path):
    rows = [("00000075_000.png", "Mass", 0, "00075", 61, "F", "PA")]
    text = nih_csv_text(rows=[(r[0], r[1], r[2], 0, r[4], r[5], r[6]) for r in rows])
    text = text.replace(",0,0,61,", ",0,00075,61,")
    write(tmp_path / "Data_Entry_2017.csv", text)
    assert read_nih(tmp_path).meta["patient_id"].tolist() == ["75"]


# -- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["Image Index", "Finding Labels", "Patient ID", "View Position"])
def test_missing_required_column(tmp_path, column):
    text = nih_csv_text().replace(column, "Something Else", 1)
    write(tmp_path / "Data_Entry_2017.csv", text)
    with pytest.raises(DatasetError) as err:
        read_nih(tmp_path)
    msg = str(err.value)
    assert repr(column) in msg and "Something Else" in msg and "Data_Entry_2017.csv" in msg


def test_unknown_finding_names_row_and_name(tmp_path):
    rows = ROWS[:3] + [("00000003_000.png", "Mass|Cardiomegally", 0, 3, 40, "F", "PA")]
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text(rows=rows))
    with pytest.raises(DatasetError, match=r"line 5.*'Cardiomegally'"):
        read_nih(tmp_path)


@pytest.mark.parametrize(
    "findings,match",
    [("", "empty"), ("No Finding|Mass", "mixes 'No Finding'"), ("Mass||Nodule", "''")],
)
def test_bad_finding_strings(tmp_path, findings, match):
    rows = [("00000003_000.png", findings, 0, 3, 40, "F", "PA")]
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text(rows=rows))
    with pytest.raises(DatasetError, match=match) as err:
        read_nih(tmp_path)
    assert "line 2" in str(err.value)


def test_repeated_image_and_empty_patient(tmp_path):
    write(tmp_path / "a" / "Data_Entry_2017.csv", nih_csv_text(rows=ROWS + ROWS[:1]))
    with pytest.raises(DatasetError, match=r"line 7: image 00000001_000.png appears more"):
        read_nih(tmp_path / "a")
    text = nih_csv_text(rows=ROWS[:1]).replace(",0,1,58,", ",0,,58,")
    write(tmp_path / "b" / "Data_Entry_2017.csv", text)
    with pytest.raises(DatasetError, match="'Patient ID' is empty"):
        read_nih(tmp_path / "b")


def test_no_metadata_in_folder(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="Data_Entry_2017.csv"):
        read_nih(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_nih(tmp_path / "nope.csv")


# -- image lookup -----------------------------------------------------------------------
def test_images_folder_beside_csv(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    touch_images(tmp_path / "images", [r[0] for r in ROWS])
    table = read_nih(tmp_path)
    assert table.paths == [str(tmp_path / "images" / r[0]) for r in ROWS]
    assert describe(table).images_on_disk == 5


def test_official_download_layout(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    touch_images(tmp_path / "images_001" / "images", [ROWS[0][0], ROWS[1][0]])
    touch_images(tmp_path / "images_002" / "images", [ROWS[2][0], ROWS[3][0]])
    table = read_nih(tmp_path)
    assert table.paths[:4] == [
        str(tmp_path / "images_001" / "images" / ROWS[0][0]),
        str(tmp_path / "images_001" / "images" / ROWS[1][0]),
        str(tmp_path / "images_002" / "images" / ROWS[2][0]),
        str(tmp_path / "images_002" / "images" / ROWS[3][0]),
    ]
    # Not found anywhere: the default images/ path (reported missing later).
    assert table.paths[4] == str(tmp_path / "images" / ROWS[4][0])


def test_images_beside_csv(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    touch_images(tmp_path, [ROWS[0][0]])
    assert read_nih(tmp_path).paths[0] == str(tmp_path / ROWS[0][0])


# -- official split lists ---------------------------------------------------------------
def test_official_lists_set_split(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    (tmp_path / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000002_000.png\n"
    )
    (tmp_path / "test_list.txt").write_text("00000075_000.png\n")
    table = read_nih(tmp_path)
    assert table.meta["split"].tolist() == ["train_val", "train_val", "train_val", "test", ""]
    assert read_nih(tmp_path, official_split=False).meta["split"].tolist() == [""] * 5


def test_overlapping_official_lists(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000001_000.png\n")
    with pytest.raises(DatasetError, match="both"):
        read_nih(tmp_path)


def test_image_list_reader(tmp_path):
    touch_images(tmp_path / "images", ["00000001_000.png"])
    txt = tmp_path / "test_list.txt"
    txt.write_text("00000001_000.png\n\n# comment\n00000075_003.png\nscan_a.png\n")
    table = read_image_list(txt)
    assert table.pathologies == () and table.labels.shape == (3, 0)
    assert table.meta["patient_id"].tolist() == ["1", "75", "scan_a"]
    assert table.meta["split"].tolist() == ["test_list"] * 3
    assert table.paths == [
        str(tmp_path / "images" / n) for n in ("00000001_000.png", "00000075_003.png", "scan_a.png")
    ]
    # Same paths as the NIH reader on the same folder.
    write(tmp_path / "Data_Entry_2017.csv", nih_csv_text())
    assert read_nih(tmp_path).paths[0] == table.paths[0]


def test_image_list_relative_paths_and_errors(tmp_path):
    touch_images(tmp_path / "images" / "sub", ["a.png"])
    txt = tmp_path / "list.txt"
    txt.write_text("sub/a.png\nsub/b.png\n")
    assert read_image_list(txt).paths == [
        str(tmp_path / "images" / "sub" / n) for n in ("a.png", "b.png")
    ]
    txt.write_text("a.png\nb.png\na.png\n")
    with pytest.raises(DatasetError, match=r"line 3: 'a.png' repeats line 1"):
        read_image_list(txt)
    txt.write_text("\n\n")
    with pytest.raises(DatasetError, match="names no images"):
        read_image_list(txt)


# -- real data --------------------------------------------------------------------------
def test_real_nih14_sample(shared_datasets):
    table = read_nih(shared_datasets / "nih14-sample")
    assert len(table) == 423
    assert table.meta["patient_id"].nunique() == 423
    positives = dict(
        zip(table.pathologies, table.labels.sum(axis=0).astype(int).tolist(), strict=True)
    )
    assert positives == NEEDED
    assert all(os.path.isfile(p) for p in table.paths)
    assert table.paths[0] == str(shared_datasets / "nih14-sample" / "images" / "00000075_000.png")
    assert set(table.meta["view"]) <= {"PA", "AP"}


def test_real_nih14_fullres(shared_datasets):
    table = read_nih(shared_datasets / "nih14-fullres")
    assert len(table) == 24
    assert describe(table).images_on_disk == 24


def test_real_nih14_metadata(shared_datasets):
    table = read_nih(shared_datasets / "nih14-metadata")
    assert len(table) == 112_120
    assert table.meta["patient_id"].nunique() == 30_805
    assert table.meta["patient_id"].iloc[0] == "1"
    assert table.paths[0] == str(shared_datasets / "nih14-metadata" / "images" / "00000001_000.png")
    assert set(table.meta["view"]) == {"PA", "AP"}
    assert not np.isnan(table.labels).any()
