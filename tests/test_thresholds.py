"""cxr.evaluation.thresholds: choosing per-label thresholds on validation data; saving, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.evaluation.metrics import confusion_at
from cxr.evaluation.thresholds import Thresholds, choose_thresholds


def _val():
    # label A: hand-worked Youden case (best J at 0.7); label B: no positives; label C: NaN rows
    labels = np.array(
        [[0, 0, 1], [0, 0, 0], [0, 0, np.nan], [1, 0, 1], [1, 0, 0], [1, 0, np.nan]], dtype=float
    )
    probs = np.array(
        [
            [0.1, 0.2, 0.8],
            [0.3, 0.1, 0.2],
            [0.6, 0.3, 0.99],
            [0.4, 0.2, 0.6],
            [0.7, 0.5, 0.1],
            [0.9, 0.1, 0.0],
        ]
    )
    return labels, probs, ["A", "B", "C"]


def test_youden_per_label_with_notes_for_one_class_labels():
    labels, probs, names = _val()
    t = choose_thresholds(labels, probs, names)
    assert t["A"] == 0.7
    # C on its 4 known rows: y = 1,0,1,0 p = 0.8,0.2,0.6,0.1 -> separable,
    # highest best threshold 0.6
    assert t["C"] == 0.6
    assert "B" not in t and "no positive images" in t.notes["B"]
    assert dict(t) == {"A": 0.7, "C": 0.6} and t.method == "youden" and t.target is None


def test_sensitivity_target():
    labels, probs, names = _val()
    t = choose_thresholds(labels, probs, names, method="sensitivity", target=1.0)
    assert t["A"] == 0.4  # all three positives (0.4, 0.7, 0.9) at p >= 0.4
    assert confusion_at(labels[:, 0], probs[:, 0], t["A"]).sensitivity == 1.0
    assert t.method == "sensitivity" and t.target == 1.0 and "sensitivity >= 1" in t.describe()


def test_bad_arguments():
    labels, probs, names = _val()
    with pytest.raises(ValueError, match="method must be one of"):
        choose_thresholds(labels, probs, names, method="f1")
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        choose_thresholds(labels, probs, names[:2])
    with pytest.raises(ValueError, match="target sensitivity"):
        choose_thresholds(labels, probs, names, method="sensitivity", target=0)


def test_save_load_roundtrip_and_plain_mapping(tmp_path):
    labels, probs, names = _val()
    t = choose_thresholds(labels, probs, names, source="val.csv")
    path = t.save(tmp_path / "thr.json")
    back = Thresholds.load(path)
    assert (
        dict(back) == dict(t)
        and back.notes == t.notes
        and back.method == "youden"
        and back.source == "val.csv"
    )
    (tmp_path / "plain.json").write_text(json.dumps({"Pleural Effusion": 0.3, "Mass": 0.25}))
    plain = Thresholds.load(tmp_path / "plain.json")
    assert dict(plain) == {"Effusion": 0.3, "Mass": 0.25} and plain.method == "given"


def test_load_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        Thresholds.load(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text(json.dumps({"Mass": "high"}))
    with pytest.raises(ValueError, match="'Mass' is 'high'"):
        Thresholds.load(tmp_path / "text.json")


# the one headline ---------------------------------------------------------------------------
def test_headline_names_every_finding_at_or_above_its_threshold_and_none_below():
    from cxr.thresholds import headline

    labels = ("Effusion", "Mass", "Nodule", "Edema")
    t = {"Effusion": 0.5, "Mass": 0.3, "Nodule": 0.76, "Edema": 0.6}
    p = [0.62, 0.31, 0.72, 0.6]
    # Nodule has the highest probability but is below its threshold: not named
    assert (
        headline(labels, p, t) == "At or above threshold: Effusion 0.620, Mass 0.310, Edema 0.600"
    )
    p = [0.1, 0.2, 0.72, 0.3]
    assert headline(labels, p, t) == (
        "No finding at or above its threshold (highest: Nodule 0.720, threshold 0.760)"
    )
    assert headline(labels, p, {}) == "No thresholds stored (highest: Nodule 0.720)"
    assert headline(labels, p, t, not_chest=True) == "Not a chest X-ray: no findings reported"
    with pytest.raises(ValueError, match="3 probabilities for 4 labels"):
        headline(labels, p[:3], t)


def test_one_headline_for_the_table_the_json_and_the_dicom_result():
    import numpy as np

    from cxr.dicomout.record import ImageResult
    from cxr.inference import ImagePrediction, PredictionResult

    labels = ("Effusion", "Mass", "Nodule")
    t = {"Effusion": 0.42, "Nodule": 0.76}
    p = np.array([0.56, 0.9, 0.7], np.float32)
    result = PredictionResult(labels, t, [ImagePrediction("a.dcm", p)])
    dicom = ImageResult.from_prediction(
        labels, p, t, not_chest=None, model_name="m", model_version="1", model_sha256="0" * 64
    )
    text = result.to_text()
    assert result.headline(p) == dicom.headline() == "At or above threshold: Effusion 0.560"
    assert "  " + dicom.headline() + "\n" in text
