import numpy as np
import pandas as pd
import pytest

from cxr.leakage import LeakageReport, find_leakage
from cxr.split import split_by_patient, split_tables
from test_split import (  # small table builders shared with the split tests
    make,
    synthetic,
)


def test_find_leakage_clean_split():
    table = synthetic()
    report = find_leakage(split_tables(table, split_by_patient(table)))
    assert isinstance(report, LeakageReport)
    assert not report.leaked and report.shared == {} and report.images_affected == 0
    assert report.splits == ("train", "val", "test")
    assert "No patient leakage" in report.to_text()


def test_find_leakage_finds_planted_patients_exactly():
    table = synthetic()
    a = split_by_patient(table)
    pid = table.patient_ids
    # plant: move one image of three train patients into test and one of a val patient
    # into both train and test (three rows), by rewriting assignment rows
    planted = {}
    b = a.copy()
    train_multi = [p for p in pd.unique(pid[a == "train"]) if (pid == p).sum() >= 2][:3]
    for p in train_multi:
        b[np.flatnonzero(pid == p)[0]] = "test"
        planted[p] = ("train", "test")
    val_p = [p for p in pd.unique(pid[a == "val"]) if (pid == p).sum() >= 3][0]
    rows = np.flatnonzero(pid == val_p)
    b[rows[0]], b[rows[1]] = "train", "test"
    planted[val_p] = ("train", "val", "test")
    report = find_leakage(split_tables(table, b))
    assert report.leaked
    assert report.shared == planted
    assert report.images_affected == int(np.isin(pid, list(planted)).sum())
    text = report.to_text()
    assert "4 patients" in text
    assert "train & test: 4 shared patients" in text
    assert "train & val: 1 shared patient," in text
    assert "val & test: 1 shared patient," in text
    assert val_p in text and train_multi[0] in text
    short = report.to_text(max_examples=1)
    assert "(3 more)" in short
    assert report.pair_counts() == {("train", "val"): 1, ("train", "test"): 4, ("val", "test"): 1}


def test_find_leakage_ignores_empty_patient_ids_and_needs_two_tables():
    t1 = make(["/a", "/b"], ["", "5"], np.zeros((2, 1)), ["Mass"])
    t2 = make(["/c", "/d"], ["", "6"], np.zeros((2, 1)), ["Mass"])
    assert not find_leakage({"a": t1, "b": t2}).leaked
    t3 = make(["/e"], ["5"], np.zeros((1, 1)), ["Mass"])
    report = find_leakage({"a": t1, "b": t2, "c": t3})
    assert report.shared == {"5": ("a", "c")} and report.images_affected == 2
    with pytest.raises(ValueError, match="at least two"):
        find_leakage({"a": t1})
