import warnings

import numpy as np
import pandas as pd
import pytest

from cxr.labels import NIH14_LABELS
from cxr.leakage import find_leakage
from cxr.split import (
    DEFAULT_FRACTIONS,
    save_split,
    split_by_patient,
    split_summary,
    split_tables,
)
from cxr.table import LabelTable

nan = np.nan


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def make(paths, patients, labels, names, **kw):
    return LabelTable.from_columns(paths, patients, np.array(labels, dtype=float), names, **kw)


def synthetic(n_patients=300, seed=0, max_images=5):
    """Patients with 1..max_images images; a common, a medium, a rare (20 single-image
    patients, one positive each) and a partly unknown label."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_images + 1, n_patients)
    patient = np.repeat([f"p{i:04d}" for i in range(n_patients)], sizes)
    n = len(patient)
    labels = np.zeros((n, 4), dtype=np.float32)
    labels[:, 0] = rng.random(n) < 0.3
    labels[:, 1] = rng.random(n) < 0.08
    single = np.flatnonzero(sizes == 1)[:20]
    first_row = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    labels[first_row[single], 2] = 1
    labels[:, 3] = rng.random(n) < 0.2
    labels[rng.random(n) < 0.4, 3] = nan
    paths = [f"/img/{i:05d}.png" for i in range(n)]
    return make(paths, patient, labels, ["Effusion", "Mass", "Hernia", "Edema"])


def patients_per_split(table, assignment):
    frame = pd.DataFrame({"patient": table.patient_ids, "split": assignment})
    return frame.groupby("patient")["split"].nunique()


def read_nih_metadata(csv_path):
    """A LabelTable of the NIH Data_Entry CSV (private to these tests)."""
    frame = pd.read_csv(
        csv_path,
        dtype=str,
        usecols=["Image Index", "Finding Labels", "Patient ID", "View Position"],
        keep_default_na=False,
    )
    findings = frame["Finding Labels"].str.get_dummies(sep="|")
    labels = np.zeros((len(frame), len(NIH14_LABELS)), dtype=np.float32)
    for j, name in enumerate(NIH14_LABELS):
        labels[:, j] = findings[name].to_numpy()
    # 'No Finding' (and only it) stays all zero
    assert set(findings.columns) == set(NIH14_LABELS) | {"No Finding"}
    return LabelTable.from_columns(
        frame["Image Index"].tolist(),
        frame["Patient ID"].str.lstrip("0").tolist(),
        labels,
        NIH14_LABELS,
        views=frame["View Position"].tolist(),
        source=str(csv_path),
    )


def random_patient_split(table, fractions, seed):
    """The baseline: patients in random order, cut where the image fractions are met."""
    patients, inverse = np.unique(table.patient_ids.astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(patients))
    share = np.cumsum(np.bincount(inverse)[order]) / len(table)
    cuts = np.cumsum(list(fractions.values()))[:-1]
    which = np.minimum(np.searchsorted(cuts, share, side="right"), len(fractions) - 1)
    per_patient = np.empty(len(patients), dtype=np.int64)
    per_patient[order] = which
    return np.asarray(list(fractions), dtype=str)[per_patient[inverse]]


def worst_relative_deviation(table, assignment):
    """Per label: max over splits of |prevalence in split / overall prevalence - 1|."""
    summary = split_summary(table, assignment)
    overall = np.nanmean(table.labels, axis=0)
    prevalence = summary[list(table.pathologies)].to_numpy()
    return np.abs(prevalence / overall - 1).max(axis=0)


# --------------------------------------------------------------------------------------
# fractions
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"train": 0.8, "val": 0.1}, "sum to 1"),
        ({"train": 0.8, "val": 0.1, "test": 0.1000001}, None),  # within 1e-6: fine
        ({"train": 0.8, "val": 0.1, "test": 0.10001}, "sum to 1"),
        ({"train": 1.1, "val": -0.1}, "'val' must be a positive"),
        ({"train": 1.0, "val": 0.0}, "'val' must be a positive"),
        ({"train": nan, "val": 0.5}, "'train' must be a positive"),
        ({"train": "half", "val": 0.5}, "not a number"),
        ({"": 0.5, "val": 0.5}, "non-empty"),
        ({" train": 0.5, "val": 0.5}, "spaces"),
        ({1: 0.5, "val": 0.5}, "non-empty strings"),
        ([("train", 0.5), ("train", 0.5)], "'train' appears more than once"),
        ({}, "empty"),
    ],
)
def test_bad_fractions_are_errors_naming_the_problem(fractions, message):
    table = synthetic(20)
    if message is None:
        assert len(split_by_patient(table, fractions)) == len(table)
        return
    with pytest.raises(ValueError, match=message):
        split_by_patient(table, fractions)


def test_default_fractions():
    assert dict(DEFAULT_FRACTIONS) == {"train": 0.8, "val": 0.1, "test": 0.1}


# --------------------------------------------------------------------------------------
# the split on small tables
# --------------------------------------------------------------------------------------
def test_every_image_assigned_and_no_patient_in_two_splits():
    table = synthetic()
    a = split_by_patient(table)
    assert a.shape == (len(table),)
    assert set(a) == {"train", "val", "test"}
    assert (patients_per_split(table, a) == 1).all()
    share = pd.Series(a).value_counts(normalize=True)
    for name, want in DEFAULT_FRACTIONS.items():
        assert abs(share[name] - want) < 0.02, share


def test_rare_label_is_spread_in_proportion():
    # 20 single-image Hernia patients: exactly 16 / 2 / 2 (a random split rarely does this)
    table = synthetic()
    a = split_by_patient(table)
    hernia = table.labels[:, 2] == 1
    assert pd.Series(a[hernia]).value_counts().to_dict() == {"train": 16, "val": 2, "test": 2}
    baseline = [
        pd.Series(random_patient_split(table, DEFAULT_FRACTIONS, s)[hernia]).value_counts()
        for s in range(10)
    ]
    assert sum(b.get("val", 0) == 2 and b.get("test", 0) == 2 for b in baseline) < 5


def test_small_table_prevalence_close_and_nan_not_positive():
    table = synthetic(600, seed=3)
    a = split_by_patient(table, {"train": 0.5, "test": 0.5}, seed=1)
    dev = worst_relative_deviation(table, a)
    assert dev.max() < 0.1, dev
    summary = split_summary(table, a)
    # Edema is NaN on ~40% of images: prevalence is positives / known, not / images
    known = ~np.isnan(table.labels[:, 3])
    for name in ("train", "test"):
        rows = (a == name) & known
        assert summary.loc[name, "Edema"] == pytest.approx(table.labels[rows, 3].mean())


def test_nan_counts_as_neither_positive_nor_negative():
    # two patients; only p1 has a positive. NaN rows of p0 must not be taken as positives.
    table = make(
        ["/a", "/b", "/c", "/d"],
        ["p0", "p0", "p1", "p2"],
        [[nan], [nan], [1], [0]],
        ["Mass"],
    )
    a = split_by_patient(table, {"train": 0.5, "test": 0.5})
    assert a[0] == a[1]
    # p1 (the only positive) goes first, to the split wanting most: train (tie -> images)
    # and p0 (2 images) then fills the other split
    assert a[2] != a[0]


def test_deterministic_by_seed_and_independent_of_row_order():
    table = synthetic(400)
    a = split_by_patient(table, seed=7)
    assert np.array_equal(a, split_by_patient(table, seed=7))
    assert not np.array_equal(a, split_by_patient(table, seed=8))
    perm = np.random.default_rng(0).permutation(len(table))
    b = split_by_patient(table.subset(perm), seed=7)
    assert np.array_equal(b, a[perm])


def test_one_split_and_empty_table_and_tiny_tables():
    table = synthetic(10)
    assert set(split_by_patient(table, {"all": 1.0})) == {"all"}
    empty = table.subset(np.zeros(len(table), dtype=bool))
    assert split_by_patient(empty).shape == (0,)
    # fewer patients than splits: still every image assigned, no patient split
    two = make(["/a", "/b", "/c"], ["1", "1", "2"], [[1], [0], [0]], ["Mass"])
    a = split_by_patient(two)
    assert a[0] == a[1] and set(a) <= {"train", "val", "test"}


def test_empty_patient_id_makes_each_image_its_own_patient():
    table = make([f"/{i}" for i in range(100)], [""] * 100, np.zeros((100, 1)), ["Mass"])
    counts = pd.Series(split_by_patient(table)).value_counts()
    assert counts.to_dict() == {"train": 80, "val": 10, "test": 10}


# --------------------------------------------------------------------------------------
# keep_existing
# --------------------------------------------------------------------------------------
def with_splits(table, splits):
    meta = table.meta.copy()
    meta["split"] = splits
    return LabelTable(meta, table.labels, table.pathologies, table.source)


def test_keep_existing_keeps_official_rows_and_splits_the_rest():
    base = synthetic(400)
    pid = base.patient_ids
    official_test = np.isin(pid, [f"p{i:04d}" for i in range(0, 400, 4)])  # 1 in 4 patients
    table = with_splits(base, np.where(official_test, "test", ""))
    a = split_by_patient(table, keep_existing=True)
    assert (a[official_test] == "test").all()
    # the test split is closed: nothing else joins it; the rest is shared 8:1
    assert (a[~official_test] != "test").all()
    rest = pd.Series(a[~official_test]).value_counts(normalize=True)
    assert abs(rest["train"] - 8 / 9) < 0.03 and abs(rest["val"] - 1 / 9) < 0.03
    assert (patients_per_split(table, a) == 1).all()
    # without keep_existing the official split is ignored
    b = split_by_patient(table)
    assert (b[official_test] != "test").any()


def test_keep_existing_by_name_resplits_other_official_names():
    # NIH's reader gives "train_val" / "test": keep only "test", re-split "train_val"
    base = synthetic(200)
    official_test = np.isin(base.patient_ids, [f"p{i:04d}" for i in range(0, 200, 5)])
    table = with_splits(base, np.where(official_test, "test", "train_val"))
    a = split_by_patient(table, {"train": 0.9, "val": 0.1}, keep_existing={"test"})
    assert (a[official_test] == "test").all()
    assert set(a[~official_test]) == {"train", "val"}
    # True keeps both names (nothing is left to split)
    assert np.array_equal(split_by_patient(table, keep_existing=True), table.meta["split"])


def test_keep_existing_patient_follows_its_kept_split_with_a_warning():
    table = make(
        ["/a", "/b", "/c", "/d", "/e"],
        ["1", "1", "2", "3", "4"],
        np.zeros((5, 1)),
        ["Mass"],
        splits=["test", "", "", "", ""],
    )
    with pytest.warns(UserWarning, match="1 images of 1 patients .* follow"):
        a = split_by_patient(table, keep_existing=True)
    assert a[0] == a[1] == "test"
    assert "test" not in a[2:]


def test_keep_existing_patient_in_two_kept_splits_is_an_error():
    table = make(
        ["/a", "/b", "/c"],
        ["7", "7", "8"],
        np.zeros((3, 1)),
        ["Mass"],
        splits=["train", "test", ""],
    )
    with pytest.raises(ValueError, match="patient '7' in test, train"):
        split_by_patient(table, keep_existing=True)
    # keeping only one of the names is consistent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = split_by_patient(table, keep_existing={"test"})
    assert a[0] == a[1] == "test"


def test_keep_existing_with_every_split_closed_is_an_error():
    table = make(["/a", "/b"], ["1", "2"], np.zeros((2, 1)), ["Mass"], splits=["train", ""])
    with pytest.raises(ValueError, match="every split of fractions"):
        split_by_patient(table, {"train": 1.0}, keep_existing=True)


# --------------------------------------------------------------------------------------
# split_tables, split_summary, save_split
# --------------------------------------------------------------------------------------
def test_split_tables_and_summary():
    table = make(
        ["/a", "/b", "/c", "/d", "/e"],
        ["1", "1", "2", "3", "3"],
        [[1, nan], [0, 1], [1, 0], [0, nan], [0, nan]],
        ["Mass", "Edema"],
        views=["PA", "AP", "PA", "PA", "AP"],
    )
    a = np.array(["test", "test", "train", "val", "val"])
    parts = split_tables(table, a)
    assert list(parts) == ["train", "val", "test"]
    assert parts["test"].paths == ["/a", "/b"]
    assert (parts["val"].meta["split"] == "val").all()
    assert parts["val"].meta["view"].tolist() == ["PA", "AP"]
    assert list(split_tables(table, a, order=["test", "val", "train", "extra"])) == [
        "test",
        "val",
        "train",
        "extra",
    ]
    summary = split_summary(table, a)
    assert list(summary.index) == ["train", "val", "test"]
    assert list(summary.columns) == ["images", "patients", "Mass", "Edema"]
    assert summary["images"].tolist() == [1, 2, 2]
    assert summary["patients"].tolist() == [1, 1, 1]
    assert summary.loc["test", "Mass"] == 0.5
    assert summary.loc["test", "Edema"] == 1.0
    assert np.isnan(summary.loc["val", "Edema"])  # nothing known
    with pytest.raises(ValueError, match="shape"):
        split_tables(table, a[:3])
    with pytest.raises(ValueError, match="1 images have no split"):
        split_summary(table, np.array(["train", "", "val", "val", "test"]))


def test_save_split_files_read_back(tmp_path):
    table = synthetic(60)
    a = split_by_patient(table)
    paths = save_split(tmp_path / "out", table, a)
    assert set(paths) == {"train", "val", "test", "split", "split_summary"}
    for name in ("train", "val", "test"):
        back = LabelTable.read_csv(paths[name])
        assert back.paths == table.subset(a == name).paths
        np.testing.assert_array_equal(back.labels, table.labels[a == name])
        assert set(back.meta["split"]) == {name}
        assert pd.read_csv(paths[name]).shape[0] == int((a == name).sum())
    listing = pd.read_csv(paths["split"], dtype=str, keep_default_na=False)
    assert list(listing.columns) == ["path", "patient_id", "split"]
    assert listing["split"].tolist() == a.tolist()
    assert listing["patient_id"].tolist() == table.patient_ids.tolist()
    summary = pd.read_csv(paths["split_summary"], index_col="split")
    assert summary["images"].sum() == len(table)
    np.testing.assert_allclose(
        summary[list(table.pathologies)].to_numpy(),
        split_summary(table, a)[list(table.pathologies)].to_numpy(),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="cannot save split 'split'"):
        save_split(tmp_path / "bad", table, np.where(a == "val", "split", a))
    with pytest.raises(ValueError, match="cannot save split '../x'"):
        save_split(tmp_path / "bad", table, np.where(a == "val", "../x", a))


# --------------------------------------------------------------------------------------
# the full NIH metadata (112,120 images, 30,805 patients)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nih(shared_datasets):
    table = read_nih_metadata(shared_datasets / "nih14-metadata" / "Data_Entry_2017_v2020.csv.gz")
    assert len(table) == 112_120
    assert len(np.unique(table.patient_ids)) == 30_805
    return table


@pytest.fixture(scope="module")
def nih_split(nih):
    return split_by_patient(nih, seed=0)


def test_nih_split_is_leak_free_and_sized(nih, nih_split):
    a = nih_split
    assert (patients_per_split(nih, a) == 1).all()
    share = pd.Series(a).value_counts(normalize=True)
    for name, want in DEFAULT_FRACTIONS.items():
        assert abs(share[name] - want) < 0.02 * want, share  # within 2% relative


def test_nih_stratification_keeps_every_label_and_beats_random(nih, nih_split):
    a = nih_split
    # measured: worst 1.3% (Hernia, 227 positives), every other label <= 0.4%
    strat = worst_relative_deviation(nih, a)
    assert strat.max() < 0.05, dict(zip(NIH14_LABELS, strat.round(3), strict=True))
    hernia = NIH14_LABELS.index("Hernia")
    # a plain random patient split: Hernia off by 6%..100% relative over 20 seeds (median 24%)
    random_dev = np.array(
        [
            worst_relative_deviation(nih, random_patient_split(nih, DEFAULT_FRACTIONS, s))
            for s in range(5)
        ]
    )
    assert strat[hernia] * 3 < random_dev[:, hernia].min(), random_dev[:, hernia]
    assert strat.max() * 3 < np.median(random_dev.max(axis=1))
    # another seed: a different split, just as good
    b = split_by_patient(nih, seed=1)
    assert not np.array_equal(a, b)
    assert worst_relative_deviation(nih, b).max() < 0.05


def test_nih_keep_official_test(nih):
    # patients whose id ends in 0 or 5 play NIH's official test list (~20% of patients)
    pid = nih.patient_ids.astype(str)
    official = np.char.endswith(pid, "0") | np.char.endswith(pid, "5")
    table = with_splits(nih, np.where(official, "test", "train_val"))
    a = split_by_patient(table, keep_existing={"test"})
    assert (a[official] == "test").all() and (a[~official] != "test").all()
    rest = pd.Series(a[~official]).value_counts(normalize=True)
    assert abs(rest["train"] - 8 / 9) < 0.01 and abs(rest["val"] - 1 / 9) < 0.01
    sub = ~official
    dev = worst_relative_deviation(nih.subset(sub), a[sub])
    assert dev.max() < 0.05, dev


def test_nih_find_leakage_is_exact(nih, nih_split):
    a = nih_split
    tables = split_tables(nih, a)
    clean = find_leakage(tables)
    assert not clean.leaked
    # plant 50 train patients' first image into test
    pid = nih.patient_ids
    train_patients = pd.unique(pid[a == "train"])[:50]
    first = pd.Series(np.arange(len(pid))).groupby(pid).first()[train_patients].to_numpy()
    b = a.copy()
    b[first] = "test"
    moved = np.isin(pid, train_patients)
    single = [p for p in train_patients if (pid == p).sum() == 1]  # moved whole, no leak
    report = find_leakage(split_tables(nih, b))
    expected = set(train_patients) - set(single)
    assert set(report.shared) == expected
    assert all(v == ("train", "test") for v in report.shared.values())
    assert report.images_affected == int(moved.sum()) - len(single)
    assert f"train & test: {len(expected)} shared patients" in report.to_text()
