import pytest

from cxr.labels import (
    CHEXPERT14_LABELS,
    NIH14_LABELS,
    canonical_label,
    canonical_labels,
    is_normal_class,
)


def test_standard_lists_have_14_unique_names():
    assert len(NIH14_LABELS) == len(set(NIH14_LABELS)) == 14
    assert len(CHEXPERT14_LABELS) == len(set(CHEXPERT14_LABELS)) == 14


@pytest.mark.parametrize(
    "raw, canon",
    [
        ("Pleural Effusion", "Effusion"),
        ("pleural_effusion", "Effusion"),
        ("EFFUSION", "Effusion"),
        ("Pleural Thickening", "Pleural_Thickening"),
        ("PNEUMONIA", "Pneumonia"),
        ("no_finding", "No Finding"),
        ("enlarged cardiomediastinum", "Enlarged Cardiomediastinum"),
        ("  Something New ", "Something New"),
    ],
)
def test_canonical_label(raw, canon):
    assert canonical_label(raw) == canon


def test_every_standard_name_is_its_own_canonical_form():
    for name in NIH14_LABELS + CHEXPERT14_LABELS:
        assert canonical_label(name) == name


def test_two_spellings_of_one_label_are_refused():
    with pytest.raises(ValueError, match="Pleural Effusion.*Effusion"):
        canonical_labels(["Effusion", "Pleural Effusion"])


def test_empty_name_is_refused():
    with pytest.raises(ValueError):
        canonical_label("  ")


def test_normal_class_names():
    assert is_normal_class("NORMAL") and is_normal_class("No Finding")
    assert not is_normal_class("PNEUMONIA")
