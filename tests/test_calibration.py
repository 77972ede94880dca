"""Post-hoc calibration maps (cxr.calibration)."""

import numpy as np
import pytest

from cxr.calibration import CALIBRATION_METHODS, Calibration, LabelMap, fit_calibration
from cxr.evaluation.metrics import expected_calibration_error, roc_auc

NAMES = ("Effusion", "Mass", "Hernia")


def overconfident(n: int, seed: int, shift: float = 1.5):
    """Labels drawn from true risks q; the model reports sigmoid(2 logit(q) + 1.5): too sure
    and too high, as a model trained with a large positive weight is."""
    rng = np.random.default_rng(seed)
    q = rng.beta(0.6, 2.5, size=(n, len(NAMES)))
    y = (rng.random(q.shape) < q).astype(np.float64)
    y[:, 2] = 0.0
    y[:4, 2] = 1.0  # Hernia: 4 positives only
    z = np.log(q) - np.log1p(-q)
    return y, 1 / (1 + np.exp(-(2 * z + shift)))


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_calibration_lowers_ece_on_held_out_data_and_keeps_auc(method):
    shift = 0.0 if method == "temperature" else 1.5  # a temperature only rescales
    y_val, p_val = overconfident(3000, seed=0, shift=shift)
    y_test, p_test = overconfident(3000, seed=1, shift=shift)
    cal = fit_calibration(y_val, p_val, NAMES, method=method, source="val")
    out = cal.apply(p_test, NAMES)
    for j, name in enumerate(NAMES[:2]):
        before = expected_calibration_error(y_test[:, j], p_test[:, j])
        after = expected_calibration_error(y_test[:, j], out[:, j])
        assert after < 0.5 * before and after < 0.05, (name, before, after)
        assert roc_auc(y_test[:, j], out[:, j]) == pytest.approx(
            roc_auc(y_test[:, j], p_test[:, j])
        )
        assert cal.maps[name].kind == method


def test_thresholds_keep_their_decisions():
    y, p = overconfident(2000, seed=2)
    for method in CALIBRATION_METHODS:
        cal = fit_calibration(y, p, NAMES, method=method)
        out = cal.apply(p, NAMES)
        for j, name in enumerate(NAMES):
            for t in (0.1, 0.31, 0.5, 0.77):
                same = (p[:, j] >= t) == (out[:, j] >= np.float32(cal.map(name, t)))
                assert same.mean() >= 0.999, (method, name, t)  # float32 rounding at the edge


def test_labels_with_few_positives_use_the_shared_slope_and_say_so():
    y, p = overconfident(1000, seed=3)
    for method in CALIBRATION_METHODS:
        cal = fit_calibration(y, p, NAMES, method=method, min_positives=10)
        assert cal.maps["Hernia"].kind == "platt", method  # a shared slope, its own intercept
        assert "Hernia (4 positive" in cal.notes[0] and "shared slope" in cal.notes[0]
        assert len(cal.notes) == 1  # no shift, no note about one


def test_round_trip_and_validation():
    y, p = overconfident(500, seed=4)
    cal = fit_calibration(y, p, NAMES, method="isotonic", min_positives=5, source="cache/val")
    again = Calibration.from_dict(cal.to_dict(), NAMES)
    np.testing.assert_array_equal(again.apply(p, NAMES), cal.apply(p, NAMES))
    assert again.source == "cache/val" and again.n_images == 500
    with pytest.raises(ValueError, match="'Mass'.*platt needs finite a > 0"):
        Calibration.from_dict({"maps": {"Mass": {"kind": "platt", "a": -1.0, "b": 0.0}}})
    with pytest.raises(ValueError, match="does not have"):
        Calibration.from_dict({"maps": {"Other": {"kind": "temperature", "t": 1.0}}}, NAMES)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        LabelMap("temperature", {"t": float("nan")}).check("Mass")
    with pytest.raises(ValueError, match="method must be one of"):
        fit_calibration(y, p, NAMES, method="beta")


def test_nan_stays_nan_and_unmapped_labels_pass_through():
    cal = Calibration("temperature", {"Mass": LabelMap("temperature", {"t": 2.0})})
    p = np.array([[0.9, np.nan, 0.9]], np.float32)
    out = cal.apply(p, NAMES)
    assert out[0, 0] == np.float32(0.9) and np.isnan(out[0, 1]) and out[0, 2] == np.float32(0.9)
    assert 0.5 < cal.apply(np.array([[0.1, 0.9, 0.1]]), NAMES)[0, 1] < 0.9
