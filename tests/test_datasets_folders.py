"""Folder-per-class reader."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from cxr.datasets import DatasetError, patient_from_name, read_class_folders


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_classes_normal_and_patients(tmp_path):
    touch(
        tmp_path,
        "NORMAL/IM-0115-0001.jpeg",
        "NORMAL/IM-0115-0002.JPEG",
        "NORMAL/NORMAL2-IM-0383-0001.jpeg",
        "PNEUMONIA/person123_bacteria_456.jpeg",
        "PNEUMONIA/person123_virus_457.jpeg",
        "PNEUMONIA/sub/deeper/person9_bacteria_1.png",
        "PNEUMONIA/notes.txt",
        "PNEUMONIA/.hidden.png",
        "README.md",
    )
    table = read_class_folders(tmp_path)
    assert table.pathologies == ("Pneumonia",)
    assert len(table) == 6
    assert table.paths == sorted(table.paths)
    assert all(os.path.isabs(p) for p in table.paths)
    by_name = dict(
        zip((os.path.basename(p) for p in table.paths), table.labels[:, 0].tolist(), strict=True)
    )
    assert by_name["IM-0115-0001.jpeg"] == 0 and by_name["person123_bacteria_456.jpeg"] == 1
    assert by_name["person9_bacteria_1.png"] == 1
    assert table.meta["patient_id"].tolist() == [
        "IM-0115",
        "IM-0115",
        "NORMAL2-IM-0383",
        "person123",
        "person123",
        "person9",
    ]
    assert set(table.meta["view"]) == {""} and set(table.meta["split"]) == {""}
    assert not np.isnan(table.labels).any()


def test_normal_kept_as_label_when_asked(tmp_path):
    touch(tmp_path, "NORMAL/a.png", "PNEUMONIA/b.png")
    table = read_class_folders(tmp_path, normal_classes=())
    assert table.pathologies == ("NORMAL", "Pneumonia")
    np.testing.assert_array_equal(table.labels, [[1, 0], [0, 1]])
    table = read_class_folders(tmp_path, normal_classes=["pneumonia"])
    assert table.pathologies == ("NORMAL",)


def test_multiclass_and_canonical_names(tmp_path):
    touch(
        tmp_path,
        "pleural_effusion/x1.png",
        "Cardiomegaly/x2.png",
        "No Finding/x3.png",
        "healthy/x4.png",
    )
    table = read_class_folders(tmp_path)
    assert table.pathologies == ("Cardiomegaly", "Effusion")
    rows = {
        os.path.basename(p): row.tolist() for p, row in zip(table.paths, table.labels, strict=True)
    }
    assert rows == {"x1.png": [0, 1], "x2.png": [1, 0], "x3.png": [0, 0], "x4.png": [0, 0]}


def test_image_in_two_class_folders_is_multilabel(tmp_path):
    touch(tmp_path, "Mass/p1/a.png", "Nodule/p1/a.png", "Nodule/p1/b.png", "Mass/p2/a.png")
    table = read_class_folders(tmp_path)
    assert len(table) == 3
    rows = {
        os.path.relpath(p, tmp_path): row.tolist()
        for p, row in zip(table.paths, table.labels, strict=True)
    }
    assert rows == {"Mass/p1/a.png": [1, 1], "Mass/p2/a.png": [1, 0], "Nodule/p1/b.png": [0, 1]}


def test_split_subfolders(tmp_path):
    touch(
        tmp_path,
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/PNEUMONIA/person1_virus_1.jpeg",
        "val/NORMAL/IM-0002-0001.jpeg",
        "test/PNEUMONIA/person2_bacteria_2.jpeg",
        "test/PNEUMONIA/person1_virus_1.jpeg",
        "__MACOSX/train/NORMAL/._IM-0001-0001.jpeg",
    )
    table = read_class_folders(tmp_path)
    assert len(table) == 5
    assert table.pathologies == ("Pneumonia",)
    splits = dict(
        zip((os.path.relpath(p, tmp_path) for p in table.paths), table.meta["split"], strict=True)
    )
    assert splits["train/NORMAL/IM-0001-0001.jpeg"] == "train"
    assert splits["val/NORMAL/IM-0002-0001.jpeg"] == "val"
    assert splits["test/PNEUMONIA/person1_virus_1.jpeg"] == "test"
    # Same file name in two splits: two images (not one multi-label image).
    assert table.meta["patient_id"].tolist().count("person1") == 2


def test_mixed_split_and_class_folders(tmp_path):
    touch(tmp_path, "train/NORMAL/a.png", "PNEUMONIA/b.png")
    with pytest.raises(DatasetError, match="mixes split folders"):
        read_class_folders(tmp_path)


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(DatasetError, match="no subfolders"):
        read_class_folders(tmp_path)
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        read_class_folders(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        read_class_folders(tmp_path / "nope")


def test_two_folders_meaning_one_label(tmp_path):
    touch(tmp_path, "Effusion/a.png", "Pleural Effusion/b.png")
    with pytest.raises(DatasetError, match="both mean the label 'Effusion'"):
        read_class_folders(tmp_path)


def test_patient_pattern(tmp_path):
    touch(tmp_path, "Mass/subj-7_scan-1.dcm", "Mass/subj-7_scan-2.DCM", "Mass/other.png")
    table = read_class_folders(tmp_path, patient_pattern=r"^(subj-\d+)_")
    assert table.meta["patient_id"].tolist() == ["other", "subj-7", "subj-7"]
    with pytest.raises(ValueError, match="exactly one"):
        read_class_folders(tmp_path, patient_pattern=r"(a)(b)")
    assert patient_from_name("x/00000075_001.png") == "75"
    assert patient_from_name("IM-0429-0001-0002.jpeg") == "IM-0429"
    assert patient_from_name("scan.nii.gz") == "scan"
    assert patient_from_name("p3-a.png", re.compile(r"^(p\d+)-")) == "p3"


def test_real_pediatric_pneumonia(shared_datasets):
    table = read_class_folders(shared_datasets / "pediatric-pneumonia")
    assert len(table) == 3637
    assert table.pathologies == ("Pneumonia",)
    assert all(os.path.isfile(p) for p in table.paths[:50])
    pids = set(table.meta["patient_id"])
    assert "person1000" in pids and "IM-0115" in pids
    assert all(re.fullmatch(r"person\d+|(NORMAL2-)?IM-\d+", p) for p in pids)
    normal = np.array(["/NORMAL/" in p for p in table.paths])
    assert (table.labels[normal, 0] == 0).all() and (table.labels[~normal, 0] == 1).all()
    assert normal.sum() == 924


def test_a_normal_image_is_never_merged_with_a_diseased_one(tmp_path):
    from PIL import Image

    files = {
        "NORMAL/im1.png": 10,
        "PNEUMONIA/im1.png": 200,
        "Mass/p1/a.png": 90,
        "Nodule/p1/a.png": 90,
    }
    for rel, value in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / rel)
    table = read_class_folders(tmp_path)
    rows = {
        os.path.relpath(p, tmp_path): dict(zip(table.pathologies, row, strict=True))
        for p, row in zip(table.paths, table.labels, strict=True)
    }
    # the NORMAL image is kept, all 0; the PNEUMONIA image of the same name is its own row
    assert set(rows) == {
        os.path.join("NORMAL", "im1.png"),
        os.path.join("PNEUMONIA", "im1.png"),
        os.path.join("Mass", "p1", "a.png"),
    }
    assert not any(rows[os.path.join("NORMAL", "im1.png")].values())
    assert rows[os.path.join("PNEUMONIA", "im1.png")] == {"Mass": 0, "Nodule": 0, "Pneumonia": 1}
    # the documented multi-label layout still merges labelled classes by relative name
    assert rows[os.path.join("Mass", "p1", "a.png")] == {"Mass": 1, "Nodule": 1, "Pneumonia": 0}
