"""The probe's logistic regression (cxr.training.probe_logreg): scikit-learn's objective,
solved exactly in the span of the rows, along a warm-started path of penalties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.training.probe_logreg import (
    constant_intercept,
    fit_logistic,
    fit_path,
    row_basis,
    sigmoid,
)


def _data(n=120, d=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, :3].sum(axis=1) + rng.normal(size=n) > 0.5).astype(float)
    return x, y


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_it_matches_scikit_learn(C):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _data()
    ref = sklearn.LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x, y)
    w, b = fit_logistic(x, y, C)
    assert np.abs(w - ref.coef_[0]).max() < 1e-5
    assert abs(b - ref.intercept_[0]) < 1e-5


def test_the_row_span_gives_the_same_fit_with_fewer_rows_than_features():
    x, y = _data(n=30, d=100, seed=1)
    basis = row_basis(x)
    assert basis is not None and basis.shape == (100, 30)
    assert np.allclose(basis.T @ basis, np.eye(30), atol=1e-10)
    u, b = fit_logistic(x @ basis, y, 0.5)
    w_full, b_full = fit_logistic(x, y, 0.5)
    assert np.abs(basis @ u - w_full).max() < 1e-6 and abs(b - b_full) < 1e-6
    assert row_basis(np.ones((50, 10))) is None  # more rows than features: used as they are


def test_the_path_is_the_cold_fits_and_weights_grow_with_C():
    x, y = _data(seed=2)
    Cs = [1e-3, 1e-2, 1e-1, 1.0]
    path = fit_path(x, y, Cs)
    norms = []
    for C, (w, b) in zip(Cs, path, strict=True):
        cold_w, cold_b = fit_logistic(x, y, C)
        assert np.abs(w - cold_w).max() < 1e-6 and abs(b - cold_b) < 1e-6
        norms.append(np.linalg.norm(w))
    assert norms == sorted(norms) and norms[0] < norms[-1]


def test_one_class_gives_the_constant_model():
    x, _ = _data(n=20, d=5)
    w, b = fit_logistic(x, np.zeros(20), 1.0)
    assert not w.any()
    assert b == pytest.approx(np.log(0.5 / 20.5))
    assert constant_intercept(np.ones(3)) == pytest.approx(np.log(3.5 / 0.5))


def test_sigmoid_is_stable_and_the_thread_count_is_restored():
    s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert s.tolist() == [0.0, 0.5, 1.0]
    before = torch.get_num_threads()
    fit_path(*_data(n=40, d=8), [0.1, 1.0])
    assert torch.get_num_threads() == before
