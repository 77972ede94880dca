"""describe(): dataset summaries as data, text and JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxr.datasets import DatasetSummary, describe, read_nih
from cxr.table import LabelTable


@pytest.fixture
def table(tmp_path) -> LabelTable:
    (tmp_path / "a.png").write_bytes(b"")
    labels = np.array(
        [[1, 0, np.nan], [0, np.nan, np.nan], [1, 1, np.nan], [0, 0, np.nan]], dtype=np.float32
    )
    return LabelTable.from_columns(
        paths=[str(tmp_path / n) for n in ("a.png", "b.png", "c.png", "d.png")],
        patient_ids=["p1", "p1", "p2", "p3"],
        labels=labels,
        pathologies=("Mass", "Lung Opacity", "Hernia"),
        views=["PA", "AP", "PA", ""],
        splits=["train", "train", "test", ""],
        source="fixture",
    )


def test_counts(table):
    s = describe(table)
    assert isinstance(s, DatasetSummary)
    assert (s.n_images, s.n_patients, s.images_on_disk) == (4, 3, 1)
    assert s.views == {"PA": 2, "": 1, "AP": 1}
    assert s.splits == {"train": 2, "": 1, "test": 1}
    assert list(s.labels.index) == ["Mass", "Lung Opacity", "Hernia"]
    assert list(s.labels.columns) == ["positive", "negative", "unknown", "prevalence"]
    assert s.labels.loc["Mass"].tolist() == [2, 2, 0, 0.5]
    assert s.labels.loc["Lung Opacity", "unknown"] == 1
    assert s.labels.loc["Lung Opacity", "prevalence"] == pytest.approx(1 / 3)
    assert math.isnan(s.labels.loc["Hernia", "prevalence"])
    assert describe(table, check_files=False).images_on_disk is None


def test_no_splits_means_empty_dict(table):
    plain = LabelTable(table.meta.assign(split=""), table.labels, table.pathologies)
    assert describe(plain).splits == {}


def test_to_dict_is_json_ready(table):
    d = describe(table).to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["n_images"] == 4 and back["images_on_disk"] == 1
    assert back["labels"]["Hernia"] == {
        "positive": 0,
        "negative": 0,
        "unknown": 4,
        "prevalence": None,
    }
    assert back["labels"]["Mass"]["prevalence"] == 0.5
    assert back["splits"] == {"train": 2, "": 1, "test": 1}


def test_to_text_is_aligned(table):
    text = describe(table).to_text()
    assert "images:   4" in text and "patients: 3" in text and "(3 missing)" in text
    assert "(unknown) 1" in text
    rows = [
        line for line in text.splitlines() if line.startswith(("label", "Mass", "Lung", "Hernia"))
    ]
    assert len(rows) == 4
    assert len({len(r) for r in rows}) == 1  # right-aligned columns: same width
    assert rows[1].split() == ["Mass", "2", "2", "0", "0.500"]
    assert rows[3].split()[-1] == "-"
    assert str(describe(table)) == text


def test_table_without_labels(tmp_path):
    t = LabelTable.from_columns([str(tmp_path / "x.png")], ["1"], np.zeros((1, 0)), ())
    s = describe(t)
    assert s.labels.empty and "labels:   none" in s.to_text()
    assert s.to_dict()["labels"] == {}


def test_real_nih14_sample(shared_datasets):
    s = describe(read_nih(shared_datasets / "nih14-sample"))
    assert (s.n_images, s.n_patients, s.images_on_disk) == (423, 423, 423)
    assert s.labels.loc["Infiltration", "positive"] == 91
    assert s.labels.loc["Hernia", "positive"] == 13
    assert int(s.labels["unknown"].sum()) == 0
    assert sum(s.views.values()) == 423
    assert "Pleural_Thickening" in s.to_text()


def test_check_files_on_112k(shared_datasets):
    table = read_nih(shared_datasets / "nih14-metadata")
    s = describe(table)
    assert s.images_on_disk == 0 and s.n_patients == 30_805
