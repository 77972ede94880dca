"""A folder of DICOM files as a dataset (patients, views and labels joined by file, SOP
Instance UID or accession number), and the modality check of the decoder."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr.cli import main as cxr_main
from cxr.datasets import DatasetError, detect_format, load_dataset, read_dicom_folder
from cxr.datasets.dicom_folder import DicomFolderWarning, dicom_tag_table
from cxr.dicom import DicomPolicy, dicom_policy, get_dicom_policy, modality_problem
from cxr.images import ImageReadError, load_bytes, load_for_cache, read_gray
from cxr.split import split_by_patient
from dicom_files import write_dicom

RNG = np.random.default_rng(0)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (64, 64)).astype(np.uint16)


def hospital_folder(root: Path) -> Path:
    """Two patients, three studies, four radiographs in nested folders, a DICOMDIR-like
    object without an image, a CSV of labels by SOP Instance UID."""
    specs = [
        ("P1/S1/a.dcm", "PAT-1", "1.2.3.1", "ACC1", "PA", "1.9.1"),
        ("P1/S1/b.dcm", "PAT-1", "1.2.3.1", "ACC1", "LL", "1.9.2"),
        ("P1/S2/c.dcm", "PAT-1", "1.2.3.2", "ACC2", "AP", "1.9.3"),
        ("P2/S3/IM0001", "PAT-2", "1.2.3.3", "ACC3", "PA", "1.9.4"),  # no suffix: by DICM
    ]
    for i, (rel, patient, study, acc, view, sop) in enumerate(specs):
        write_dicom(
            root / rel,
            image(i),
            PatientID=patient,
            StudyInstanceUID=study,
            AccessionNumber=acc,
            ViewPosition=view,
            Modality="DX" if i % 2 else "CR",
            BodyPartExamined="CHEST",
            SOPInstanceUID=sop,
        )
    ds = pydicom.dcmread(root / "P1/S1/a.dcm")
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.Modality = "SR"
    ds.save_as(root / "report.dcm", enforce_file_format=True)
    return root


def test_a_dicom_folder_is_a_dataset_with_tags(tmp_path):
    root = hospital_folder(tmp_path / "dicoms")
    assert detect_format(root) == "dicom"  # report.dcm at the top level
    with pytest.warns(DicomFolderWarning, match="1 DICOM file.* hold no image.*SR 1"):
        table = load_dataset(root)
    assert [Path(p).relative_to(root).as_posix() for p in table.paths] == [
        "P1/S1/a.dcm",
        "P1/S1/b.dcm",
        "P1/S2/c.dcm",
        "P2/S3/IM0001",
    ]
    assert table.meta["patient_id"].tolist() == ["PAT-1", "PAT-1", "PAT-1", "PAT-2"]
    assert table.meta["view"].tolist() == ["PA", "LL", "AP", "PA"]
    assert table.pathologies == ()
    assert "3 studies" in table.source and "CR 2" in table.source and "CHEST 4" in table.source
    tags = dicom_tag_table(root)
    assert set(tags["modality"]) == {"CR", "DX", "SR"} and set(tags["accession"]) >= {"ACC1"}
    # patient-level splits use the DICOM Patient ID
    assign = split_by_patient(table, {"a": 0.5, "b": 0.5}, seed=0)
    assert len(set(np.asarray(assign)[:3])) == 1


def test_nested_dicom_tree_without_top_level_files_is_detected(tmp_path):
    root = tmp_path / "export"
    write_dicom(root / "PAT" / "STUDY" / "IM1", image(), PatientID="X")
    assert detect_format(root) == "dicom"


def _labels(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("csv_text", "join"),
    [
        ("SOPInstanceUID,Effusion,Mass\n1.9.1,1,0\n1.9.2,0,\n1.9.3,1,1\n1.9.4,0,0\n", None),
        ("Accession Number,Effusion,Mass\nACC1,1,0\nACC2,1,1\nACC3,0,0\n", None),
        ("image,Effusion,Mass\nP1/S1/a.dcm,1,0\nb.dcm,0,\nP1/S2/c.dcm,1,1\nIM0001,0,0\n", "file"),
    ],
    ids=["sop", "accession", "file"],
)
def test_labels_join_by_sop_accession_or_file(tmp_path, csv_text, join):
    root = hospital_folder(tmp_path / "d")
    _labels(root / "labels.csv", csv_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomFolderWarning)
        table = read_dicom_folder(root, join=join)
    assert table.pathologies == ("Effusion", "Mass")
    expected = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], np.float32)
    if "Accession" in csv_text:  # one row per study: both images of ACC1 get its labels
        expected[1] = [1, 0]
    np.testing.assert_array_equal(table.labels, expected)


def test_labels_csv_outside_the_folder_and_unmatched_rows(tmp_path):
    root = hospital_folder(tmp_path / "d")
    csv = _labels(tmp_path / "y.csv", "SOPInstanceUID,Effusion\n1.9.1,1\n9.9.9,0\n")
    with pytest.warns(DicomFolderWarning) as record:
        table = read_dicom_folder(root, labels_csv=csv)
    texts = " ".join(str(w.message) for w in record)
    assert "1 row(s) match no DICOM file" in texts and "line 3" in texts
    assert "3 DICOM file(s) have no row" in texts
    assert table.labels[0, 0] == 1 and np.isnan(table.labels[1:, 0]).all()


def test_bad_labels_csv_is_refused_with_the_line(tmp_path):
    root = hospital_folder(tmp_path / "d")
    csv = _labels(tmp_path / "dup.csv", "SOPInstanceUID,Mass\n1.9.1,1\n1.9.1,0\n")
    with pytest.raises(DatasetError, match="lines 2 and 3"):
        read_dicom_folder(root, labels_csv=csv)
    csv = _labels(tmp_path / "nokey.csv", "Something,Mass\nx,1\n")
    with pytest.raises(DatasetError, match="no column to join"):
        read_dicom_folder(root, labels_csv=csv)
    write_dicom(root / "P3" / "a.dcm", image(), PatientID="PAT-3")
    csv = _labels(tmp_path / "amb.csv", "file,Mass\na.dcm,1\n")
    with pytest.raises(DatasetError, match="names more than one file"):
        read_dicom_folder(root, labels_csv=csv)
    with pytest.raises(DatasetError, match="no DICOM files"):
        read_dicom_folder(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_cli_inspect_and_labels_option(tmp_path, capsys):
    root = hospital_folder(tmp_path / "d")
    csv = _labels(
        tmp_path / "l.csv", "SOPInstanceUID,Effusion\n1.9.1,1\n1.9.2,0\n1.9.3,1\n1.9.4,0\n"
    )
    code = cxr_main(["data", "inspect", str(root), "--dicom-labels", str(csv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and '"n_patients": 2' in out and '"Effusion"' in out
    assert "cxr data: warning:" in err and "hold no image" in err and "Traceback" not in err
    code = cxr_main(["data", "inspect", str(root / "P1"), "--format", "dicom"])
    assert code == 0 and "images:   3" in capsys.readouterr().out


# the modality check --------------------------------------------------------------------
def test_modality_problem_rules():
    assert modality_problem("CR", "") is None and modality_problem("dx", "chest") is None
    assert modality_problem("", "") is None  # no Modality tag: accepted
    assert "CT (computed tomography)" in modality_problem("CT", "CHEST")
    assert "BodyPartExamined is SKULL" in modality_problem("DX", "SKULL")
    assert "BodyPartExamined is KNEE" in modality_problem("", "KNEE")


def test_wrong_modality_refused_everywhere_unless_allowed(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", image(), Modality="CT")
    skull = write_dicom(tmp_path / "skull.dcm", image(), Modality="DX", BodyPartExamined="SKULL")
    chest = write_dicom(tmp_path / "chest.dcm", image(), Modality="DX", BodyPartExamined="CHEST")
    for path in (ct, skull):
        for load in (
            lambda p: read_gray(p),
            lambda p: load_for_cache(p, 32),
            lambda p: load_bytes(p.read_bytes(), 32, name=p.name),  # the service's path
        ):
            with pytest.raises(ImageReadError) as info:
                load(path)
            assert info.value.reason == "wrong-modality" and "--allow-any-modality" in str(
                info.value
            )
        assert load_for_cache(path, 32, dicom=DicomPolicy(any_modality=True)).shape == (32, 32)
        assert load_bytes(path.read_bytes(), 32, dicom=DicomPolicy(any_modality=True)).shape
        with dicom_policy(any_modality=True):
            assert read_gray(path).shape == (64, 64)
    assert get_dicom_policy() == DicomPolicy()  # restored after the block
    assert read_gray(chest).shape == (64, 64)


def test_policy_is_validated():
    with pytest.raises(ValueError, match="multiframe"):
        DicomPolicy(multiframe="all")
    with pytest.raises(ValueError, match="any_modality"):
        DicomPolicy(any_modality="yes")  # type: ignore[arg-type]


def test_cli_predict_refuses_ct_and_allows_it_with_the_flag(tmp_path, capsys):
    import torch

    from cxr.modelfile import save_model
    from cxr.models import ModelSpec, Preprocessing, build_model

    torch.manual_seed(0)
    model = build_model(
        ModelSpec(
            labels=("Effusion", "Mass"), backbone="cxr-small-cnn", preprocessing=Preprocessing(32)
        )
    )
    model_path = save_model(tmp_path / "m.safetensors", model)
    ct = write_dicom(tmp_path / "in" / "ct.dcm", image(), Modality="CT")
    code = cxr_main(["predict", str(model_path), str(ct), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 or code == 1
    assert f"skipped {ct}: wrong-modality: Modality is CT" in err
    code = cxr_main(["predict", str(model_path), str(ct), "--no-progress", "--allow-any-modality"])
    assert code == 0
    assert get_dicom_policy() == DicomPolicy()


# files as other writers save them --------------------------------------------------------
def test_file_without_meta_header_decodes(tmp_path):
    path = write_dicom(tmp_path / "full.dcm", image(3), Modality="CR")
    ds = pydicom.dcmread(path)
    raw = tmp_path / "nometa.dcm"
    ds.preamble = None
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw.write_bytes(buf.getvalue())
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_gray(raw), read_gray(path), atol=1e-6)


def test_pydicom_warnings_become_one_line_naming_the_file(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", image(), Modality="CR")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData + bytes(128)  # excess padding: pydicom warns when decoding
    ds.save_as(path, enforce_file_format=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_gray(path)
    texts = [str(w.message) for w in caught]
    assert texts and all(t.startswith(f"{path}: ") and "\n" not in t for t in texts)
    assert any("excess padding" in t for t in texts)
