"""The prior shift of the class-weighted losses (cxr.losses.prior_shift): the prior
correction recovers known probabilities (issue 26)."""

import warnings

import numpy as np
import pytest
import torch

from cxr.losses import LOSS_NAMES, build_loss, prior_shift

#: true log-odds = C + X @ B.T: prevalences about 0.45, 0.12 and 0.03
C = np.array([-0.2, -2.3, -4.0])
B = np.array([[1.0, -0.5], [0.8, 0.6], [-0.6, 0.9]])


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, 2), true probabilities q (n, 3) and labels drawn from them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    q = 1 / (1 + np.exp(-(C + x @ B.T)))
    return x, q, (rng.random(q.shape) < q).astype(np.float64)


def fit_logistic(loss: str, x: np.ndarray, y: np.ndarray):
    """A logistic regression per label trained by minimising build_loss(loss, y) itself
    (L-BFGS, float64); returns its logits on new features."""
    fn = build_loss(loss, y)
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        value = fn(xt @ w + b, yt)
        value.backward()
        return value

    opt.step(closure)
    return lambda new: (torch.tensor(new) @ w + b).detach().numpy()


@pytest.mark.parametrize("loss", ["weighted-bce", "pos-weight-bce", "inverse-frequency", "bce"])
def test_the_prior_correction_recovers_known_probabilities(loss):
    x, _, y = draw(40_000, seed=0)
    logits = fit_logistic(loss, x, y)
    x_new, q_new, _ = draw(3_000, seed=1)
    z = logits(x_new)
    shift = prior_shift(loss, y)
    corrected = 1 / (1 + np.exp(-(z - shift)))
    raw = 1 / (1 + np.exp(-z))
    err = np.abs(corrected - q_new)
    assert err.mean() < 0.01 and err.max() < 0.05, (loss, err.mean(), err.max())
    # the correction is what does it: the weighted losses' raw scores are far off
    raw_err = np.abs(raw - q_new).mean()
    if loss == "bce":
        np.testing.assert_array_equal(shift, 0.0)
    else:
        assert raw_err > 0.1 and raw_err > 10 * err.mean(), (loss, raw_err)
        pos = y.mean(axis=0)
        np.testing.assert_allclose(shift, np.log((1 - pos) / pos))


@pytest.mark.parametrize("loss", ["weighted-bce", "pos-weight-bce", "inverse-frequency"])
def test_the_shift_is_the_log_weight_ratio_build_loss_uses(loss):
    y = np.array([[1, 0, 0, np.nan], [0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_loss(loss, y)
    w_neg = getattr(module, "w_neg", torch.ones_like(module.w_pos))
    expected = np.log(module.w_pos.double().numpy() / w_neg.double().numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # build_loss warns about degenerate labels, not this
        shift = prior_shift(loss, y)
    np.testing.assert_allclose(shift, expected, rtol=1e-6)
    assert shift[2] == 0.0  # no positives: neutral weights, no shift
    # balanced: 0; 1 positive in 3 known: log 2; 1 in 4: log 3
    assert shift[0] == 0.0
    assert shift[3] == pytest.approx(np.log(2.0)) and shift[1] == pytest.approx(np.log(3.0))


def test_focal_and_bce_have_no_shift_and_unknown_losses_are_refused():
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float64)
    assert set(LOSS_NAMES) == {
        "weighted-bce",
        "pos-weight-bce",
        "inverse-frequency",
        "focal",
        "bce",
    }
    for loss in ("focal", "bce"):
        np.testing.assert_array_equal(prior_shift(loss, y), [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        prior_shift("mse", y)
    with pytest.raises(ValueError, match="must be 0/1"):
        prior_shift("weighted-bce", y * 2)
