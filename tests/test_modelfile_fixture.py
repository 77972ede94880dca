"""A format-2 model file written before the second architecture pass still loads and predicts
the same probabilities, gate scores and decisions.

``fixtures/format2_model.safetensors`` (a small CNN at 48 px, 4 labels, thresholds, a Platt map and
the shared temperature, a not-a-chest-X-ray gate) and ``fixtures/format2_expected.npz`` (its
outputs then) were written by the code of commit 0b9f7ab (``fixtures/make_format2_model.py``);
they are never regenerated, so that this test compares today's code with yesterday's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.calibration import Calibration
from cxr.gate import OodGate
from cxr.inference import Predictor
from cxr.modelfile import load_model, read_model_info

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODEL = FIXTURES / "format2_model.safetensors"
LABELS = ("Atelectasis", "Effusion", "Nodule", "Pneumothorax")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "format2_expected.npz") as data:
        return {name: data[name] for name in data.files}


def test_the_header_reads_as_format_2_with_its_calibration_and_gate():
    info = read_model_info(MODEL)
    assert info.format_version == 2
    assert info.spec.labels == LABELS and info.spec.input_size == 48
    assert info.spec.backbone == "cxr-small-cnn"
    assert info.thresholds == {"Effusion": 0.45, "Nodule": 0.55}
    assert isinstance(info.calibration, Calibration)
    assert info.calibration.method == "platt"
    kinds = {label: m.kind for label, m in info.calibration.maps.items()}
    assert kinds == {
        "Atelectasis": "platt",
        "Effusion": "temperature",  # no increasing fit: the shared temperature
        "Nodule": "temperature",
        "Pneumothorax": "temperature",
    }
    assert isinstance(info.ood, OodGate) and info.ood.n_train == 16 and info.ood.n_val == 8
    assert info.sha256 and info.signed_by == ""


def test_it_loads_verified(expected):
    loaded = load_model(MODEL)
    assert loaded.labels == LABELS and loaded.ood is not None and loaded.calibration is not None


def test_it_predicts_the_probabilities_it_predicted_then(expected):
    pixels = expected["pixels"]
    np.testing.assert_allclose(
        Predictor(MODEL).predict_arrays(pixels), expected["probabilities"], atol=1e-6
    )
    raw = Predictor(MODEL, calibrated=False).predict_arrays(pixels)
    np.testing.assert_allclose(raw, expected["raw"], atol=1e-6)


def test_its_gate_scores_and_flags_are_those_of_then(expected):
    predictor = Predictor(MODEL)
    probs, scores = predictor.predict_arrays_ood(expected["pixels"])
    assert scores is not None and predictor.ood is not None
    np.testing.assert_allclose(probs, expected["probabilities"], atol=1e-6)
    # the expected scores came from the gate as fitted (float64, in memory); the file stores
    # its arrays as float32, which moves the scores by up to 3.2e-4 relative (most for the
    # 16 training images, which all sit at the same distance). The code of 0b9f7ab reading
    # this file computed exactly today's scores (checked when this test was written).
    np.testing.assert_allclose(scores, expected["gate_scores"], rtol=1e-3)
    np.testing.assert_array_equal(predictor.ood.flags(scores), expected["gate_flags"])


def test_stored_thresholds_map_through_the_calibration():
    predictor = Predictor(MODEL)
    calibration = predictor.calibration
    assert calibration is not None
    assert predictor.raw_thresholds == {"Effusion": 0.45, "Nodule": 0.55}
    for label, raw in predictor.raw_thresholds.items():
        assert predictor.thresholds[label] == pytest.approx(calibration.map(label, raw))
        assert predictor.output_scale(label, raw) == predictor.thresholds[label]
