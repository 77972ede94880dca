"""L2-penalised logistic regression for the probe recipe: Newton's method, in numpy.

The objective is scikit-learn's ``LogisticRegression(C=C)`` (L2, intercept not penalised)::

    f(w, b) = sum_i [log(1 + exp(s_i)) - y_i s_i] + ||w||^2 / (2 C),   s = x w + b

so a fit here and there agree to the solvers' tolerance (the tests compare); scikit-learn
is not needed at run time. Two things make it fast on few images with many features:

- the minimiser's ``w`` lies in the span of the training rows (a component orthogonal to
  every row changes no logit and only adds to the penalty), so with n rows < d features the
  problem is solved exactly in the r <= n coordinates of that span (:func:`row_basis`);
- a path of C values is fitted from the strongest penalty up, each fit starting from the
  previous solution (:func:`fit_path`): a few Newton steps each;
- the linear algebra runs in torch (float64), on one CPU thread for small systems (r below
  :data:`ONE_THREAD_BELOW`): threads gain nothing on a few hundred coordinates and, on a
  busy machine, cost tens of times the work waiting for each other.

A label whose rows are all of one class has no finite maximum-likelihood intercept; its fit
is the constant model ``w = 0``, ``b = logit((positives + 0.5) / (n + 1))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["constant_intercept", "fit_logistic", "fit_path", "row_basis", "sigmoid"]

#: Newton stops when the largest gradient entry is below this times the number of rows.
TOLERANCE = 1e-9
#: Newton steps at most per fit.
MAX_ITER = 100
#: Systems of fewer coordinates than this are solved on one CPU thread.
ONE_THREAD_BELOW = 512


@contextmanager
def _threads_for(r: int) -> Iterator[None]:
    """One torch CPU thread while solving systems of ``r`` < :data:`ONE_THREAD_BELOW`
    coordinates (the previous count is restored), else the current count."""
    before = torch.get_num_threads()
    small = r < ONE_THREAD_BELOW and before > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def sigmoid(s: np.ndarray) -> np.ndarray:
    """The logistic function, stable for large |s| (float64 in, float64 out)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(s, dtype=np.float64)))


def constant_intercept(y: np.ndarray) -> float:
    """The intercept of the constant model of 1/0 targets ``y`` (n,): the logit of the
    smoothed positive rate ``(positives + 0.5) / (n + 1)``."""
    rate = (float(np.sum(y)) + 0.5) / (len(y) + 1.0)
    return float(np.log(rate / (1.0 - rate)))


def row_basis(x: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis (d, r) of the span of the rows of ``x`` (n, d) when n < d
    (``z = x @ basis`` holds the same information in r <= n coordinates), else None (the
    features themselves are used)."""
    n, d = x.shape
    if n >= d:
        return None
    with _threads_for(n):
        _, st, vtt = torch.linalg.svd(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), full_matrices=False
        )
    s, vt = st.numpy(), vtt.numpy()
    if not len(s) or s[0] <= 0:
        return np.zeros((d, 0))
    keep = s > s[0] * 1e-10
    return np.ascontiguousarray(vt[keep].T)


def _objective(z: torch.Tensor, y: torch.Tensor, lam: float, u: torch.Tensor, b: float) -> float:
    s = z @ u + b
    return float(
        (torch.logaddexp(torch.zeros((), dtype=s.dtype), s) - y * s).sum() + 0.5 * lam * (u @ u)
    )


def fit_logistic(
    z: np.ndarray,
    y: np.ndarray,
    C: float,
    start: tuple[np.ndarray, float] | None = None,
    *,
    tol: float = TOLERANCE,
    max_iter: int = MAX_ITER,
) -> tuple[np.ndarray, float]:
    """Minimise ``f`` (module docstring) for features ``z`` (n, r) float64, targets ``y``
    (n,) 1/0 and inverse penalty ``C`` > 0, by Newton's method with a backtracking line
    search. Returns ``(w (r,), b)``; ``start`` is an initial ``(w, b)`` (default: zero
    weights and the constant model's intercept). Targets of one class give the constant
    model (module docstring)."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    n, r = z.shape
    if n == 0:
        return np.zeros(r), 0.0
    if y.min() == y.max():
        return np.zeros(r), constant_intercept(y)
    with _threads_for(r):
        u, b = _newton(
            torch.from_numpy(z), torch.from_numpy(y), 1.0 / float(C), start, tol, max_iter
        )
    return u.numpy(), b


def _newton(
    z: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    start: tuple[np.ndarray, float] | None,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, float]:
    n, r = z.shape
    if start is None:
        u, b = torch.zeros(r, dtype=torch.float64), constant_intercept(y.numpy())
    else:
        u, b = torch.tensor(np.asarray(start[0]), dtype=torch.float64), float(start[1])
    f = _objective(z, y, lam, u, b)
    hess = torch.empty((r + 1, r + 1), dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.sigmoid(z @ u + b)
        resid = p - y
        grad = torch.cat([z.T @ resid + lam * u, resid.sum().reshape(1)])
        if float(grad.abs().max()) <= tol * n:
            break
        weight = p * (1.0 - p)
        zw = z * weight[:, None]
        hess[:r, :r] = z.T @ zw
        hess[:r, :r].diagonal().add_(lam)
        hess[:r, r] = hess[r, :r] = zw.sum(dim=0)
        hess[r, r] = weight.sum() + 1e-12
        step = _solve(hess, -grad)
        slope = float(grad @ step)
        if slope >= 0:  # no descent direction left: at the minimum up to rounding
            break
        t = 1.0
        while True:
            u_new, b_new = u + t * step[:r], b + t * float(step[r])
            f_new = _objective(z, y, lam, u_new, b_new)
            if f_new <= f + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if f_new > f:  # the line search found no decrease: rounding level
            break
        u, b, f = u_new, b_new, f_new
    return u, b


def _solve(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``a x = rhs`` for the symmetric positive definite Hessian (Cholesky), or by least
    squares when rounding made it indefinite."""
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs[:, None], factor)[:, 0]
    return torch.linalg.lstsq(a, rhs[:, None]).solution[:, 0]


def fit_path(
    z: np.ndarray, y: np.ndarray, Cs: Sequence[float] | np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """:func:`fit_logistic` for every C of ``Cs`` (ascending), each started from the
    previous solution; the fits in the order of ``Cs``."""
    out: list[tuple[np.ndarray, float]] = []
    start: tuple[np.ndarray, float] | None = None
    with _threads_for(np.shape(z)[1]):
        for C in Cs:
            start = fit_logistic(z, y, float(C), start)
            out.append(start)
    return out
