import numpy as np
import pytest

from cxr.table import LabelTable, merge_tables

nan = np.nan


def make(paths, patients, labels, names, **kw):
    return LabelTable.from_columns(paths, patients, np.array(labels, dtype=float), names, **kw)


def test_shape_and_value_checks_name_the_problem():
    with pytest.raises(ValueError, match="shape"):
        make(["/a"], ["1"], [[1, 0]], ["Mass"])
    with pytest.raises(ValueError, match="'Mass' of '/a' is 2"):
        make(["/a"], ["1"], [[2]], ["Mass"])
    with pytest.raises(ValueError, match="repeat"):
        make(["/a"], ["1"], [[1, 0]], ["Mass", "Mass"])


def test_subset_by_index_and_mask():
    t = make(["/a", "/b", "/c"], ["1", "2", "3"], [[1], [0], [nan]], ["Mass"])
    assert t.subset([2, 0]).paths == ["/c", "/a"]
    sub = t.subset(np.array([False, True, True]))
    assert sub.paths == ["/b", "/c"]
    assert np.isnan(sub.labels[1, 0]) and sub.labels[0, 0] == 0


def test_select_labels_canonicalises_and_orders():
    t = make(["/a"], ["1"], [[1, 0]], ["Mass", "Effusion"])
    s = t.select_labels(["pleural effusion", "Mass"])
    assert s.pathologies == ("Effusion", "Mass")
    assert s.labels.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="Hernia"):
        t.select_labels(["Hernia"])


def test_csv_round_trip_keeps_unknowns(tmp_path):
    t = make(
        ["/a.png", "/b.png"],
        ["7", "8"],
        [[1, nan], [0, 1]],
        ["Mass", "No Finding"],
        views=["PA", ""],
        splits=["train", "test"],
    )
    back = LabelTable.read_csv(t.save_csv(tmp_path / "t.csv"))
    assert back.pathologies == t.pathologies
    assert back.meta.equals(t.meta)
    np.testing.assert_array_equal(back.labels, t.labels)


def test_read_csv_refuses_other_layouts(tmp_path):
    (tmp_path / "x.csv").write_text("Image,Mass\na.png,1\n")
    with pytest.raises(ValueError, match="patient_id"):
        LabelTable.read_csv(tmp_path / "x.csv")


def test_merge_masks_labels_a_dataset_lacks():
    a = make(["/a"], ["1"], [[1, 0]], ["Mass", "Effusion"])
    b = make(["/b"], ["2"], [[1, 1]], ["Effusion", "Fracture"])
    m = merge_tables([a, b])
    assert m.pathologies == ("Mass", "Effusion", "Fracture")
    np.testing.assert_array_equal(m.labels, [[1, 0, nan], [nan, 1, 1]])
    assert m.paths == ["/a", "/b"]
