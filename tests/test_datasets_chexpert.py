"""CheXpert reader, on small fixture CSVs in both the -small and the full layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxr.datasets import DatasetError, load_dataset, read_chexpert, read_nih
from cxr.datasets.chexpert import CHEXPERT_COLUMNS
from cxr.labels import CHEXPERT14_LABELS, NIH14_LABELS, canonical_label
from cxr.table import merge_tables

HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)

# Rows as in the real train.csv: 14 observation cells after the 5 meta columns.
TRAIN_ROWS = [
    # patient00001 study1: frontal AP, No Finding + support devices
    "train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,0.0,,,,0.0,,,,1.0",
    # patient00002 study2: frontal AP, uncertain findings
    "train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    # patient00002 study1: frontal AP
    "train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
    # patient00002 study1: lateral
    "train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,",
    # patient00003: frontal PA, effusion
    "train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,1.0,,,",
]
VALID_ROWS = [
    "valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,1.0",
    "valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,1.0",
]


def make_chexpert(parent: Path, name: str = "CheXpert-v1.0-small", valid: bool = True) -> Path:
    """A CheXpert folder whose CSV paths start with ``name/`` (relative to ``parent``)."""
    root = parent / name
    root.mkdir(parents=True)
    (root / "train.csv").write_text(
        HEADER + "\n" + "\n".join(f"{name}/{r}" for r in TRAIN_ROWS) + "\n"
    )
    if valid:
        (root / "valid.csv").write_text(
            HEADER + "\n" + "\n".join(f"{name}/{r}" for r in VALID_ROWS) + "\n"
        )
    return root


@pytest.fixture(params=["CheXpert-v1.0-small", "CheXpert-v1.0"])
def chexpert_dir(tmp_path, request) -> Path:
    return make_chexpert(tmp_path, request.param)


def col(name: str) -> int:
    return CHEXPERT14_LABELS.index(name)


def test_columns_map_to_canonical_labels():
    assert tuple(map(canonical_label, CHEXPERT_COLUMNS)) == CHEXPERT14_LABELS


def test_default_read(chexpert_dir):
    table = read_chexpert(chexpert_dir)
    assert table.pathologies == CHEXPERT14_LABELS
    assert "Effusion" in table.pathologies and "Pleural Effusion" not in table.pathologies
    # Frontal only: 4 train + 2 valid.
    assert len(table) == 6
    assert table.meta["split"].tolist() == ["train"] * 4 + ["valid"] * 2
    assert table.meta["view"].tolist() == ["AP", "AP", "AP", "PA", "AP", "PA"]
    assert table.meta["patient_id"].tolist() == [
        "patient00001",
        "patient00002",
        "patient00002",
        "patient00003",
        "patient64541",
        "patient64542",
    ]
    # Paths are relative to the dataset's parent folder.
    assert table.paths[0] == str(
        chexpert_dir / "train" / "patient00001" / "study1" / "view1_frontal.jpg"
    )
    assert table.paths[4] == str(
        chexpert_dir / "valid" / "patient64541" / "study1" / "view1_frontal.jpg"
    )
    assert all(os.path.isabs(p) for p in table.paths)
    # Default: uncertain -> 1 (U-Ones), blank -> NaN.
    y = table.labels
    assert y[1, col("Cardiomegaly")] == 1 and y[1, col("Effusion")] == 1
    assert y[1, col("Lung Opacity")] == 1
    assert np.isnan(y[1, col("No Finding")])
    assert y[0, col("No Finding")] == 1 and y[0, col("Edema")] == 0
    assert y[3, col("Effusion")] == 1 and y[3, col("Pneumothorax")] == 0
    assert not np.isnan(y[4:]).any()


@pytest.mark.parametrize(
    "policy,expected",
    [("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan), ("U-Ones", 1.0), ("U-Zeros", 0.0)],
)
def test_uncertainty_policies(chexpert_dir, policy, expected):
    table = read_chexpert(chexpert_dir, uncertain=policy)
    row = table.labels[1]  # patient00002 study2 frontal: -1.0 in five columns
    for name in ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Effusion"):
        np.testing.assert_equal(row[col(name)], expected)
    assert row[col("Lung Opacity")] == 1.0  # certain positives never change
    assert row[col("Fracture")] == 1.0


def test_blank_policy(chexpert_dir):
    nan_table = read_chexpert(chexpert_dir)
    zero_table = read_chexpert(chexpert_dir, blank="zero", uncertain="ignore")
    blank = np.isnan(nan_table.labels[0])
    assert blank.sum() == 10
    assert (zero_table.labels[0][blank] == 0).all()
    # Uncertain stays NaN under ignore even with blank="zero".
    assert np.isnan(zero_table.labels[1, col("Cardiomegaly")])
    assert zero_table.labels[1, col("No Finding")] == 0


def test_bad_policies(chexpert_dir):
    with pytest.raises(ValueError, match="uncertain='maybe'.*ones"):
        read_chexpert(chexpert_dir, uncertain="maybe")
    with pytest.raises(ValueError, match="blank="):
        read_chexpert(chexpert_dir, blank="one")
    with pytest.raises(ValueError, match="split='test'"):
        read_chexpert(chexpert_dir, split="test")


def test_frontal_filter_off_keeps_laterals(chexpert_dir):
    table = read_chexpert(chexpert_dir, frontal_only=False)
    assert len(table) == 8
    assert table.meta["view"].tolist().count("LL") == 2
    lateral = table.meta["view"] == "LL"
    assert all(p.endswith("lateral.jpg") for p in table.meta.loc[lateral, "path"])


def test_split_choice_and_csv_source(chexpert_dir):
    assert set(read_chexpert(chexpert_dir, split="valid").meta["split"]) == {"valid"}
    assert len(read_chexpert(chexpert_dir, split="train")) == 4
    from_csv = read_chexpert(chexpert_dir / "valid.csv")
    assert from_csv.paths == read_chexpert(chexpert_dir, split="valid").paths
    with pytest.raises(DatasetError, match="split='train'"):
        read_chexpert(chexpert_dir / "valid.csv", split="train")


def test_only_train_csv_present(tmp_path):
    root = make_chexpert(tmp_path, valid=False)
    assert len(read_chexpert(root)) == 4
    with pytest.raises(DatasetError, match="valid.csv"):
        read_chexpert(root, split="valid")


def test_renamed_dataset_folder(tmp_path):
    root = make_chexpert(tmp_path, "CheXpert-v1.0-small")
    moved = root.rename(tmp_path / "chexpert")
    table = read_chexpert(moved)
    assert table.paths[0] == str(moved / "train" / "patient00001" / "study1" / "view1_frontal.jpg")


def test_bad_value_names_row_and_column(tmp_path):
    root = make_chexpert(tmp_path)
    text = (
        (root / "train.csv").read_text().replace(",Frontal,PA,,,,,,1.0,", ",Frontal,PA,,,,,,2.0,")
    )
    (root / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"train.csv, line 6, column 'Edema': value '2.0'"):
        read_chexpert(root)


def test_missing_column_and_bad_frontal_value(tmp_path):
    root = make_chexpert(tmp_path)
    (root / "valid.csv").write_text(
        (root / "valid.csv").read_text().replace("Fracture", "Fractures")
    )
    with pytest.raises(DatasetError, match=r"\['Fracture'\] not found"):
        read_chexpert(root)
    (root / "valid.csv").write_text(
        (root / "valid.csv")
        .read_text()
        .replace("Fractures", "Fracture")
        .replace(",Lateral,", ",Oblique,")
    )
    with pytest.raises(DatasetError, match=r"valid.csv, line 4: 'Frontal/Lateral' is 'oblique'"):
        read_chexpert(root)


def test_path_without_patient(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    (root / "train.csv").write_text(
        HEADER
        + "\nCheXpert-v1.0-small/train/x/study1/view1_frontal.jpg,F,1,Frontal,AP"
        + ",0.0" * 14
        + "\n"
    )
    with pytest.raises(DatasetError, match="patientNNNNN"):
        read_chexpert(root)


def test_missing_source(tmp_path):
    with pytest.raises(DatasetError, match="train.csv and/or valid.csv"):
        read_chexpert(tmp_path)


def test_merge_with_nih_sample(shared_datasets, tmp_path):
    nih = read_nih(shared_datasets / "nih14-sample")
    chex = load_dataset(make_chexpert(tmp_path), uncertain="zeros")
    merged = merge_tables([nih, chex])
    assert len(merged) == 423 + 6
    assert set(merged.pathologies) == set(NIH14_LABELS) | set(CHEXPERT14_LABELS)
    assert len(merged.pathologies) == 14 + 14 - 7  # seven names are shared after harmonising
    names = list(merged.pathologies)
    # NIH images: NaN for CheXpert-only labels, known 0/1 for NIH labels.
    nih_rows = merged.labels[:423]
    for label in ("No Finding", "Lung Opacity", "Support Devices", "Fracture"):
        assert np.isnan(nih_rows[:, names.index(label)]).all()
    assert not np.isnan(nih_rows[:, names.index("Effusion")]).any()
    assert nih_rows[:, names.index("Effusion")].sum() == 57
    # CheXpert images: NaN for NIH-only labels; Pleural Effusion merged into Effusion.
    chex_rows = merged.labels[423:]
    for label in ("Hernia", "Emphysema", "Infiltration", "Mass", "Nodule"):
        assert np.isnan(chex_rows[:, names.index(label)]).all()
    # blank -> NaN, uncertain -> 0 under U-Zeros.
    np.testing.assert_array_equal(
        chex_rows[:, names.index("Effusion")], [np.nan, 0, np.nan, 1, 0, 1]
    )


def test_frontal_lateral_from_file_name_when_column_absent(tmp_path):
    root = make_chexpert(tmp_path)
    for name in ("train.csv", "valid.csv"):
        lines = (root / name).read_text().splitlines()
        # Drop the Frontal/Lateral column (the 4th).
        cut = [",".join(c for k, c in enumerate(line.split(",")) if k != 3) for line in lines]
        (root / name).write_text("\n".join(cut) + "\n")
    table = read_chexpert(root, frontal_only=False)
    assert table.meta["view"].tolist().count("LL") == 2
    assert len(read_chexpert(root)) == 6
    (root / "valid.csv").write_text(
        (root / "valid.csv").read_text().replace("view1_frontal", "view1")
    )
    with pytest.raises(DatasetError, match="says neither frontal nor lateral"):
        read_chexpert(root)
    assert len(read_chexpert(root, frontal_only=False)) == 8


def test_a_repeated_chexpert_row_is_refused(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_COLUMNS)
    row = "CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg,F,50,Frontal,AP" + (
        ",1.0" * len(CHEXPERT_COLUMNS)
    )
    (root / "train.csv").write_text(f"{header}\n{row}\n{row}\n")
    with pytest.raises(DatasetError, match="lines 2 and 3: image .*view1_frontal.jpg"):
        read_chexpert(root)


def test_paths_climbing_out_of_the_dataset_folder_are_refused(tmp_path):
    root = make_chexpert(tmp_path, valid=False)
    rows = (root / "train.csv").read_text().splitlines()
    rows[2] = rows[2].replace("train/patient00002", "../../../etc/patient00002")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"train\.csv, line 3: image path .* climbs out"):
        read_chexpert(root)
    assert len(read_chexpert(root, allow_outside=True, frontal_only=False)) == 5
