"""cxr.evaluation.predictions: reading/writing prediction CSVs, pairing them with label tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.evaluation.alignment import align, align_pair
from cxr.evaluation.predictions import (
    PredictionError,
    Predictions,
    read_predictions,
    write_predictions,
)
from cxr.table import LabelTable

NAMES = ("Atelectasis", "Effusion", "Mass")


def _table(n=6, root="/data/nih/images", names=NAMES):
    rng = np.random.default_rng(0)
    labels = (rng.random((n, len(names))) < 0.5).astype(np.float32)
    return LabelTable.from_columns(
        [f"{root}/img{i}.png" for i in range(n)],
        [f"p{i // 2}" for i in range(n)],
        labels,
        names,
        source="labels.csv",
    )


def _preds(images, names=NAMES, seed=1, source="preds.csv"):
    probs = np.random.default_rng(seed).random((len(images), len(names)))
    return Predictions(np.array(images), probs, names, source)


def _write(path, text):
    path.write_text(text)
    return path


# reading --------------------------------------------------------------------------------
def test_read_prob_prefixed_columns(tmp_path):
    f = _write(
        tmp_path / "p.csv",
        "Image Index,prob_Atelectasis,prob_Pleural Effusion,Patient ID\n"
        "a.png,0.1,0.2,7\nb.png,0.3,0.4,8\n",
    )
    p = read_predictions(f)
    assert p.pathologies == ("Atelectasis", "Effusion")
    np.testing.assert_allclose(p.probs, [[0.1, 0.2], [0.3, 0.4]])
    assert list(p.images) == ["a.png", "b.png"]
    assert any("Patient ID" in n and "ignored" in n for n in p.notes)


def test_read_unprefixed_label_columns_and_detected_image_column(tmp_path):
    f = _write(tmp_path / "p.csv", "path,view,effusion,MASS\nx/a.png,PA,0.5,0.25\n")
    p = read_predictions(f)
    assert p.pathologies == ("Effusion", "Mass") and p.images[0] == "x/a.png"
    assert any("view" in n for n in p.notes)


def test_read_other_prefixes_image_column_option_and_label_selection(tmp_path):
    f = _write(tmp_path / "p.csv", "file_id,p_Mass,p_Effusion\na,0.1,0.9\n")
    with pytest.raises(PredictionError, match="no image column found"):
        read_predictions(f)
    p = read_predictions(f, labels=["Effusion"], image_column="file_id")
    assert p.pathologies == ("Effusion",) and p.probs[0, 0] == 0.9
    with pytest.raises(PredictionError, match=r"no probability column for \['Hernia'\]"):
        read_predictions(f, labels=["Hernia"], image_column="file_id")


def test_read_errors_name_file_line_and_column(tmp_path):
    f = _write(tmp_path / "p.csv", "Image Index,prob_Mass\na.png,0.1\nb.png,high\n")
    with pytest.raises(
        PredictionError, match=r"p.csv, line 3, column 'prob_Mass': 'high' is not a number"
    ):
        read_predictions(f)
    f = _write(tmp_path / "q.csv", "Image Index,comment\na.png,x\n")
    with pytest.raises(PredictionError, match="no probability columns"):
        read_predictions(f)
    with pytest.raises(ValueError, match="does not exist"):
        read_predictions(tmp_path / "missing.csv")


def test_empty_cells_are_nan(tmp_path):
    f = _write(tmp_path / "p.csv", "Image Index,prob_Mass\na.png,\nb.png,0.5\n")
    assert np.isnan(read_predictions(f).probs[0, 0])


def test_write_read_roundtrip(tmp_path):
    probs = np.array([[0.123456789, np.nan], [1.0, 0.0]])
    path = write_predictions(
        tmp_path / "out" / "p.csv", ["a.png", "b.png"], probs, ["Pleural Effusion", "Mass"]
    )
    assert Path(path).read_text().splitlines()[0] == "Image Index,prob_Effusion,prob_Mass"
    back = read_predictions(path)
    np.testing.assert_allclose(back.probs, probs, rtol=1e-8)
    assert back.pathologies == ("Effusion", "Mass")
    with pytest.raises(PredictionError, match="shape"):
        write_predictions(tmp_path / "x.csv", ["a.png"], probs, ["A", "B"])


# aligning -------------------------------------------------------------------------------
def test_align_by_file_name_in_table_order():
    table = _table()
    images = [f"img{i}.png" for i in (5, 3, 1, 0, 2, 4)]
    preds = _preds(images)
    y, p, patients, report = align(table, preds)
    np.testing.assert_array_equal(y, table.labels)
    for row, name in enumerate(images):
        np.testing.assert_array_equal(p[int(name[3])], preds.probs[row])
    assert list(patients) == list(table.patient_ids) and report.pathologies == NAMES
    assert report.missing_predictions == report.unlabelled_predictions == report.duplicate_rows == 0


def test_missing_images_both_ways_are_refused_then_allowed():
    table = _table()
    preds = _preds([f"img{i}.png" for i in range(1, 6)] + ["other.png"])
    with pytest.raises(PredictionError) as err:
        align(table, preds)
    msg = str(err.value)
    assert "1 of 6 labelled image(s) have no prediction" in msg and "img0.png" in msg
    assert "1 of 6 predicted image(s) are not in the dataset's labels (other.png)" in msg
    assert "allow_missing=True (--allow-missing)" in msg
    y, _p, _, report = align(table, preds, allow_missing=True)
    assert len(y) == 5 and report.missing_predictions == 1 and report.unlabelled_predictions == 1
    assert any("img0.png" in n and "left out" in n for n in report.notes)


def test_duplicates_identical_conflicting_and_allowed():
    table = _table(3)
    preds = _preds(["img0.png", "img1.png", "img2.png"])
    dup = Predictions(
        np.r_[preds.images, ["img1.png"]], np.r_[preds.probs, preds.probs[1:2]], NAMES, "p.csv"
    )
    with pytest.raises(
        PredictionError, match=r"1 duplicate prediction row\(s\) for the same image \(img1.png\)"
    ):
        align(table, dup)
    _y, p, _, report = align(table, dup, allow_duplicates=True)
    assert (
        len(p) == 3 and report.duplicate_rows == 1 and any("duplicate" in n for n in report.notes)
    )
    clash = Predictions(dup.images, np.r_[preds.probs, preds.probs[:1]], NAMES, "p.csv")
    with pytest.raises(PredictionError, match="different probabilities"):
        align(table, clash, allow_duplicates=True)


def test_duplicate_rows_in_the_dataset_are_refused():
    table = _table(3)
    doubled = LabelTable.from_columns(
        table.paths + table.paths[:1],
        ["a", "b", "c", "a"],
        np.r_[table.labels, table.labels[:1]],
        NAMES,
    )
    with pytest.raises(PredictionError, match=r"the dataset lists 1 image\(s\) more than once"):
        align(doubled, _preds(["img0.png", "img1.png", "img2.png"]))


def test_nan_predictions_refused_then_left_out_per_label():
    table = _table(4)
    preds = _preds([f"img{i}.png" for i in range(4)])
    preds.probs[2, 1] = np.nan
    with pytest.raises(
        PredictionError,
        match=r"1 prediction\(s\) are NaN/empty \(\{'Effusion': 1\}; images img2.png",
    ):
        align(table, preds)
    _y, p, _, report = align(table, preds, allow_missing=True)
    assert np.isnan(p[2, 1]) and report.nan_predictions == {"Effusion": 1}


def test_out_of_range_probabilities_are_refused_even_with_allow_missing():
    table = _table(2)
    preds = _preds(["img0.png", "img1.png"])
    preds.probs[0, 2] = 3.5
    with pytest.raises(PredictionError, match=r"outside \[0, 1\] for \['Mass'\].*logits"):
        align(table, preds, allow_missing=True)


def test_labels_on_one_side_are_noted_and_requested_labels_checked():
    table = _table(3, names=("Atelectasis", "Effusion", "Hernia"))
    preds = _preds([f"img{i}.png" for i in range(3)], names=("Effusion", "Atelectasis", "Mass"))
    _y, p, _, report = align(table, preds)
    assert report.pathologies == ("Atelectasis", "Effusion")
    np.testing.assert_array_equal(p[:, 0], preds.probs[:, 1])  # columns follow the table's order
    assert report.labels_only_in_table == ("Hernia",) and report.labels_only_in_predictions == (
        "Mass",
    )
    assert any("Hernia" in n for n in report.notes) and any("Mass" in n for n in report.notes)
    with pytest.raises(PredictionError, match=r"Hernia \(preds.csv\)"):
        align(table, preds, labels=["Hernia"])
    with pytest.raises(PredictionError, match="shares no label"):
        align(table, _preds(["img0.png"], names=("Nodule",)))


def test_colliding_file_names_are_matched_by_path():
    table = LabelTable.from_columns(
        ["/d/site1/a.png", "/d/site2/a.png", "/d/site2/b.png"],
        ["1", "2", "3"],
        np.array([[1.0], [0.0], [1.0]]),
        ["Mass"],
    )
    preds = Predictions(
        np.array(["site2/a.png", "site1/a.png", "b.png"]), np.array([[0.2], [0.9], [0.7]]), ["Mass"]
    )
    _y, p, _, _ = align(table, preds)
    np.testing.assert_array_equal(p[:, 0], [0.9, 0.2, 0.7])
    ambiguous = Predictions(
        np.array(["a.png", "site2/a.png", "b.png"]), np.array([[0.2], [0.9], [0.7]]), ["Mass"]
    )
    with pytest.raises(PredictionError, match=r"match several images.*a.png"):
        align(table, ambiguous)


def test_several_problems_in_one_message():
    table = _table(3)
    preds = _preds(["img0.png", "img0.png", "zzz.png"])
    preds.probs[1] = preds.probs[0]
    with pytest.raises(PredictionError) as err:
        align(table, preds)
    lines = str(err.value).splitlines()
    assert len(lines) == 4  # header + duplicate + missing + unlabelled


def test_align_pair_keeps_common_images_and_labels():
    table = _table(4)
    a = _preds([f"img{i}.png" for i in range(4)], seed=1)
    b = _preds([f"img{i}.png" for i in range(1, 4)], names=("Mass", "Effusion"), seed=2)
    with pytest.raises(PredictionError, match="no prediction"):
        align_pair(table, a, b)
    y, pa, pb, _patients, report = align_pair(table, a, b, allow_missing=True)
    assert report.pathologies == ("Effusion", "Mass") and y.shape == pa.shape == pb.shape == (3, 2)
    np.testing.assert_array_equal(pa[:, 1], a.probs[1:, 2])
    np.testing.assert_array_equal(pb[:, 0], b.probs[:, 1])
    assert any("only one of the two" in n for n in report.notes)
