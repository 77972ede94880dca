"""The prior shift in the calibration and the fallback for labels with few validation
positives: a shared slope with per-label intercepts (issue 26)."""

import math

import numpy as np
import pytest
import torch

from cxr.calibration import INTERCEPT_RIDGE, Calibration, LabelMap, fit_calibration
from cxr.evaluation.metrics import expected_calibration_error
from cxr.losses import build_loss, prior_shift

NAMES = ("Effusion", "Mass", "Hernia")


def sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def test_the_shift_is_subtracted_from_the_logit_before_the_map():
    cal = Calibration(
        "platt",
        {
            "Effusion": LabelMap("platt", {"a": 2.0, "b": 0.5}),
            "Mass": LabelMap("platt", {"a": 1.0, "b": 0.0}),
        },
        shift={"Effusion": 1.5, "Hernia": -1.0},  # Hernia: a shift without a map
    )
    p = np.array([[0.2, 0.3, 0.4], [0.9, np.nan, 0.05]], np.float32)
    out = cal.apply(p, NAMES)
    np.testing.assert_allclose(out[:, 0], sigmoid(2 * (logit(p[:, 0]) - 1.5) + 0.5), rtol=1e-6)
    assert out[0, 1] == np.float32(sigmoid(logit(np.float32(0.3)))) and np.isnan(out[1, 1])
    np.testing.assert_allclose(out[:, 2], sigmoid(logit(p[:, 2]) + 1.0), rtol=1e-6)
    for j, name in enumerate(NAMES):
        assert cal.map(name, 0.2) == pytest.approx(
            float(cal.apply(np.full((1, 3), 0.2), NAMES)[0, j])
        )
    # still strictly increasing: a raw threshold keeps its decisions on the calibrated scale
    grid = np.linspace(0.01, 0.99, 99)
    for name in NAMES:
        mapped = [cal.map(name, t) for t in grid]
        assert np.all(np.diff(mapped) > 0), name


def test_records_without_a_shift_read_and_calibrate_as_before():
    old = {
        "method": "platt",
        "source": "val",
        "n_images": 10,
        "notes": ["shared temperature 1.2 ..."],
        "maps": {
            "Effusion": {"kind": "platt", "a": 0.7, "b": -1.2},
            "Hernia": {"kind": "temperature", "t": 1.3},
        },
    }
    cal = Calibration.from_dict(old, NAMES)
    assert cal.shift == {} and cal.to_dict() == old  # written back unchanged
    p = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    out = cal.apply(p, NAMES)
    np.testing.assert_array_equal(out[:, 0], cal.maps["Effusion"](p[:, 0]).astype(np.float32))
    np.testing.assert_array_equal(out[:, 1], p[:, 1])
    np.testing.assert_array_equal(out[:, 2], cal.maps["Hernia"](p[:, 2]).astype(np.float32))


def test_the_shift_round_trips_and_is_checked():
    cal = Calibration(
        "platt", {"Mass": LabelMap("platt", {"a": 1.0, "b": 0.0})}, shift={"Mass": 2.5}
    )
    data = cal.to_dict()
    assert data["shift"] == {"Mass": 2.5}
    again = Calibration.from_dict(data, NAMES)
    p = np.array([[0.5, 0.7, 0.1]])
    np.testing.assert_array_equal(again.apply(p, NAMES), cal.apply(p, NAMES))
    with pytest.raises(ValueError, match="does not have.*'Other'"):
        Calibration.from_dict({**data, "shift": {"Other": 1.0}}, NAMES)
    with pytest.raises(ValueError, match="shift of 'Mass' must be a finite number"):
        Calibration.from_dict({**data, "shift": {"Mass": math.inf}}, NAMES)
    with pytest.raises(ValueError, match="calibration.shift must be a JSON object"):
        Calibration.from_dict({**data, "shift": [1.0]}, NAMES)


def shifted_risks(n: int, seed: int, shift: np.ndarray, positives: dict[int, int]):
    """Labels drawn from true risks q; the model reports sigmoid(logit(q) + shift), as a
    model trained with class weights does. ``positives``: column -> a fixed, small count."""
    rng = np.random.default_rng(seed)
    q = rng.beta(0.8, 3.0, size=(n, len(NAMES)))
    y = (rng.random(q.shape) < q).astype(np.float64)
    for j, k in positives.items():
        y[:, j] = 0.0
        y[:k, j] = 1.0
    return y, sigmoid(logit(q) + shift)


def test_maps_are_fitted_on_the_shifted_logits():
    shift = np.array([1.0, 2.0, 3.0])
    y, p = shifted_risks(4000, seed=0, shift=shift, positives={})
    cal = fit_calibration(y, p, NAMES, shift=shift)
    by_name = fit_calibration(y, p, NAMES, shift=dict(zip(NAMES, shift, strict=True)))
    assert cal.to_dict() == by_name.to_dict()
    assert cal.shift == {"Effusion": 1.0, "Mass": 2.0, "Hernia": 3.0}
    for name in NAMES:  # the shift undone, the data are calibrated: maps near the identity
        m = cal.maps[name]
        assert m.kind == "platt"
        assert m.params["a"] == pytest.approx(1.0, abs=0.1)
        assert m.params["b"] == pytest.approx(0.0, abs=0.15)
    assert "undone before the maps: Effusion +1.00, Mass +2.00, Hernia +3.00" in cal.notes[-1]
    with pytest.raises(ValueError, match="shift must be 3 finite log-odds"):
        fit_calibration(y, p, NAMES, shift=[1.0, 2.0])
    with pytest.raises(ValueError, match="fallback must be one of"):
        fit_calibration(y, p, NAMES, fallback="none")


def own_intercept(z: np.ndarray, y: np.ndarray, a: float) -> float:
    """The intercept b minimising the log-loss of sigmoid(a z + b) on Platt's smoothed
    targets, without a ridge (by bisection on the gradient)."""
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    lo, hi = -20.0, 20.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.sum(sigmoid(a * z + mid) - t) < 0 else (lo, mid)
    return (lo + hi) / 2


def test_labels_with_few_positives_share_a_slope_and_keep_near_the_prior_corrected_score():
    shift = np.array([1.0, 2.0, 3.0])
    # Mass: 2 positives in 600 (the model says about 20 %); Hernia: 8
    y, p = shifted_risks(600, seed=1, shift=shift, positives={1: 2, 2: 8})
    cal = fit_calibration(y, p, NAMES, shift=shift, min_positives=10)
    assert cal.maps["Effusion"].kind == "platt"
    mass, hernia = cal.maps["Mass"], cal.maps["Hernia"]
    assert mass.kind == hernia.kind == "platt" and mass.params["a"] == hernia.params["a"] > 0
    note = cal.notes[0]
    assert (
        "shared slope" in note and "Mass (2 positive, 598 negative" in note and "Hernia (8" in note
    )
    assert "temperature" not in note
    a = mass.params["a"]
    for j, name in ((1, "Mass"), (2, "Hernia")):
        b = cal.maps[name].params["b"]
        b_own = own_intercept(logit(p[:, j]) - shift[j], y[:, j], a)
        assert b_own < b < 0, (name, b_own, b)  # pulled from the data's intercept toward 0
    # the fewer positives, the stronger the pull: Mass keeps a smaller share of its own
    share = [
        cal.maps[n].params["b"] / own_intercept(logit(p[:, j]) - shift[j], y[:, j], a)
        for j, n in ((1, "Mass"), (2, "Hernia"))
    ]
    assert share[0] < share[1], share
    assert INTERCEPT_RIDGE > 0


def test_a_label_without_validation_positives_keeps_a_finite_increasing_map():
    y, p = shifted_risks(300, seed=2, shift=np.zeros(3), positives={2: 0})
    cal = fit_calibration(y, p, NAMES)
    m = cal.maps["Hernia"]
    m.check("Hernia")
    assert m.kind == "platt" and math.isfinite(m.params["b"]) and m.params["a"] > 0


def test_the_earlier_shared_temperature_is_still_available():
    y, p = shifted_risks(600, seed=3, shift=np.zeros(3), positives={2: 4})
    cal = fit_calibration(y, p, NAMES, fallback="temperature")
    assert cal.maps["Hernia"].kind == "temperature"
    assert "shared temperature" in cal.notes[0] and "Hernia (4 positive" in cal.notes[0]


# the failure on the NIH sample, reproduced -------------------------------------------------
WEIGHTED = ("Effusion", "Infiltration", "Hernia", "Pneumonia")
C = np.array([-1.0, -2.0, -4.6, -4.9])  # prevalences about 0.3, 0.15, 0.02, 0.015
B = np.array([[1.5, 0.5], [1.0, -1.0], [1.2, 0.8], [-0.7, 1.3]])


def images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 2))
    q = sigmoid(C + x @ B.T)
    return x, (rng.random(q.shape) < q).astype(np.float64)


def train_weighted(x: np.ndarray, y: np.ndarray):
    """Logistic regressions trained with build_loss("weighted-bce", y); their probabilities."""
    fn = build_loss("weighted-bce", y)
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.zeros(2, y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = fn(xt @ w + b, yt)
        value.backward()
        return value

    opt.step(closure)
    return lambda new: torch.sigmoid(torch.tensor(new) @ w + b).detach().numpy()


def test_the_prior_shift_and_intercepts_fix_what_the_shared_temperature_cannot():
    rng = np.random.default_rng(0)
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = (images(n, rng) for n in (3000, 300, 20000))
    model = train_weighted(x_tr, y_tr)
    p_val, p_te = model(x_val), model(x_te)
    rare = [j for j in range(4) if y_val[:, j].sum() < 10]
    assert rare == [2, 3], y_val.sum(axis=0)  # Hernia and Pneumonia fall back

    before = fit_calibration(y_val, p_val, WEIGHTED, fallback="temperature")  # cxr until now
    after = fit_calibration(y_val, p_val, WEIGHTED, shift=prior_shift("weighted-bce", y_tr))
    assert {before.maps[WEIGHTED[j]].kind for j in rare} == {"temperature"}
    out_before, out_after = before.apply(p_te, WEIGHTED), after.apply(p_te, WEIGHTED)

    def pooled(out):
        return expected_calibration_error(y_te.ravel(), out.ravel().astype(np.float64))

    def per_label(out, j):
        return expected_calibration_error(y_te[:, j], out[:, j].astype(np.float64))

    ece_raw, ece_before, ece_after = pooled(p_te), pooled(out_before), pooled(out_after)
    assert ece_after <= 0.10 and ece_after < 0.5 * ece_before, (ece_raw, ece_before, ece_after)
    for j in rare:
        e_before, e_after = per_label(out_before, j), per_label(out_after, j)
        assert e_after < 0.05 < e_before, (WEIGHTED[j], e_before, e_after)
