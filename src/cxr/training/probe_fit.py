"""Fitting the probe: one L2-penalised logistic regression per label on frozen features,
its penalty chosen by cross-validation (:func:`fit_probe`, :class:`ProbeFit`).

The recipe, per label (1/0 known rows only; NaN rows of a label are skipped for it):

1. for every fold k, standardise the features on the other folds' rows (mean and standard
   deviation per feature), fit the regression for every C of the grid on those rows
   (:mod:`cxr.training.probe_logreg`, the objective of scikit-learn's
   ``LogisticRegression(C=C)``; no class weights, so the probabilities stay honest) and
   predict fold k's rows: out-of-fold probabilities for every C;
2. score each C by the held-out log-loss pooled over the folds; a label with at least
   ``min_positives`` positive and negative images takes its own best C, the others share
   the C that is best on their pooled held-out log-loss (summed over those labels);
3. the model: with ``members=1`` the regression refitted on all rows with the chosen C;
   with ``members=K`` (cross-fitting) the K fold models, whose probabilities are averaged.

The standardisation is folded into the weights, so the result is a plain linear layer on
the raw pooled features: ``logits = features @ coef.T + intercept``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxr.training.probe_logreg import fit_logistic, fit_path, row_basis, sigmoid

__all__ = ["DEFAULT_CS", "MIN_POSITIVES", "ProbeFit", "fit_probe", "log_loss"]

#: Inverse L2 strengths tried (on standardised features): 1e-4 .. 10, half a decade apart.
#: 1e-4 keeps nearly only the intercept; 10 barely penalises a few hundred images.
DEFAULT_CS: np.ndarray = np.logspace(-4, 1, 11)
#: Positive (and negative) images a label needs to choose its own C.
MIN_POSITIVES = 10
#: Probabilities are clipped to [EPS, 1 - EPS] in the log-loss.
EPS = 1e-15


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe over L labels and C features, with M members.

    Attributes:
        coef: float64 (M * L, C), raw-feature units, member-major: rows m*L .. (m+1)*L - 1
            are member m (the layout of an ensemble head's output layer).
        intercept: float64 (M * L,), the same layout.
        members: M (1: one model refitted on all rows; K: the K fold models).
        folds: K, the cross-validation folds.
        Cs: float64 (G,), the grid of inverse penalties tried, ascending.
        C: float64 (L,), the C each label got.
        shared: bool (L,), whether that C is the shared one (too few positives or negatives).
        shared_C: the shared C (None when every label chose its own).
        oof: float64 (N, L), out-of-fold probabilities at the chosen C (NaN for a label
            without any known row).
        cv_loss: float64 (G, L), mean held-out log-loss per C (NaN: no known rows).
        cv_auc: float64 (L,), ROC AUC of ``oof`` (NaN where a class is absent).
        positives, negatives: int (L,), known positive and negative images per label.
    """

    coef: np.ndarray
    intercept: np.ndarray
    members: int
    folds: int
    Cs: np.ndarray
    C: np.ndarray
    shared: np.ndarray
    shared_C: float | None
    oof: np.ndarray
    cv_loss: np.ndarray
    cv_auc: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    @property
    def num_labels(self) -> int:
        return len(self.C)

    def member_probabilities(self, features: np.ndarray) -> np.ndarray:
        """float64 (M, N, L): each member's probabilities for raw features (N, C)."""
        x = np.asarray(features, dtype=np.float64)
        logits = x @ self.coef.T + self.intercept  # (N, M * L)
        per = logits.reshape(len(x), self.members, self.num_labels)
        return sigmoid(per).transpose(1, 0, 2)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """float64 (N, L): the members' mean probability for raw features (N, C)."""
        return self.member_probabilities(features).mean(axis=0)

    @property
    def cv_macro_auc(self) -> float:
        """Mean of :attr:`cv_auc` over the labels that have one (NaN when none has)."""
        valid = self.cv_auc[~np.isnan(self.cv_auc)]
        return float(valid.mean()) if len(valid) else math.nan

    def describe_C(self, names: list[str] | tuple[str, ...]) -> str:
        """One line: the C of each label, the shared one last with its labels."""
        own = [f"{n} {c:.3g}" for n, c, s in zip(names, self.C, self.shared, strict=True) if not s]
        text = ", ".join(own) if own else "no label had enough positives for its own C"
        rare = [n for n, s in zip(names, self.shared, strict=True) if s]
        if rare and self.shared_C is not None:
            text += f"; shared C {self.shared_C:.3g} ({', '.join(rare)})"
        return text


def log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Element-wise binary cross-entropy of 1/0 targets and probabilities (clipped)."""
    p = np.clip(p, EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature of ``x`` (n, C); a constant feature gets 1."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[~(sd > 1e-12 * np.maximum(1.0, np.abs(mu)))] = 1.0
    return mu, sd


def _raw(w: np.ndarray, b: float, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights on standardised features as raw-feature ``(coef, intercept)``."""
    coef = w / sd
    return coef, float(b - coef @ mu)


def _check(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, Cs: np.ndarray, members: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    f = np.asarray(folds)
    if x.ndim != 2 or y.ndim != 2 or len(y) != len(x) or f.shape != (len(x),):
        raise ValueError(
            f"features {x.shape}, labels {y.shape} and folds {f.shape} must be (N, C), "
            "(N, L) and (N,) for the same N images"
        )
    if not np.isfinite(x).all():
        raise ValueError("the features hold NaN or infinite values")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 1, 0 or NaN (unknown)")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"folds must be integer fold numbers, got dtype {f.dtype}")
    ids = np.unique(f)
    if len(ids) < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {len(ids)}")
    if members not in (1, len(ids)):
        raise ValueError(
            f"members must be 1 (one model refitted on all images) or the number of folds "
            f"({len(ids)}: the fold models), got {members}"
        )
    grid = np.sort(np.asarray(Cs, dtype=np.float64).ravel())
    if not len(grid) or not (np.isfinite(grid).all() and (grid > 0).all()):
        raise ValueError(f"Cs must be positive finite inverse penalties, got {Cs!r}")
    return x, y, f, ids, grid


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    Cs: np.ndarray | list[float] = DEFAULT_CS,
    min_positives: int = MIN_POSITIVES,
    members: int = 1,
    oof_features: np.ndarray | None = None,
) -> ProbeFit:
    """Fit one L2-penalised logistic regression per label, C chosen by cross-validation
    (the module docstring gives the recipe).

    Args:
        features: (N, C) pooled features (e.g. averaged over an image and its mirror).
        labels: (N, L) 1 / 0 / NaN (unknown: skipped for that label).
        folds: (N,) int fold numbers (:func:`cxr.split.patient_folds`), at least 2 folds.
        Cs: the inverse penalties tried, on standardised features.
        min_positives: positive and negative images a label needs for its own C.
        members: 1 (refit on all rows) or the number of folds (the fold models).
        oof_features: (N, C) features the held-out rows are scored and the out-of-fold
            probabilities computed on (default: ``features``), e.g. the original view of
            images whose model was fitted on view-averaged features, so that the scores
            are of the inputs the model will see.

    Raises:
        ValueError: shapes, values, folds or members that do not fit.
    """
    x, y, f, ids, grid = _check(features, labels, folds, np.asarray(Cs), members)
    xo = x if oof_features is None else np.asarray(oof_features, dtype=np.float64)
    if xo.shape != x.shape or not np.isfinite(xo).all():
        raise ValueError(f"oof_features must be finite and of the features' shape {x.shape}")
    n, d = x.shape
    n_labels, g_count = y.shape[1], len(grid)
    known = ~np.isnan(y)
    oof_all = np.full((g_count, n, n_labels), np.nan)
    fold_coef = np.zeros((len(ids), g_count, n_labels, d))
    fold_int = np.zeros((len(ids), g_count, n_labels))
    for i, k in enumerate(ids):
        train, held = f != k, f == k
        mu, sd = _standardiser(x[train])
        xs = (x[train] - mu) / sd
        basis = row_basis(xs)
        z = xs if basis is None else xs @ basis
        for j in range(n_labels):
            rows = known[train, j]
            if not rows.any():
                continue
            for g, (u, b) in enumerate(fit_path(z[rows], y[train, j][rows], grid)):
                w = u if basis is None else basis @ u
                raw_w, raw_b = _raw(w, b, mu, sd)
                fold_coef[i, g, j], fold_int[i, g, j] = raw_w, raw_b
                oof_all[g, held, j] = sigmoid(xo[held] @ raw_w + raw_b)
    losses = np.where(known[None], log_loss(np.nan_to_num(y)[None], oof_all), 0.0)
    sums, counts = losses.sum(axis=1), known.sum(axis=0)  # (G, L), (L,)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv_loss = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    positives = np.nansum(y, axis=0).astype(np.int64)
    negatives = counts - positives
    own = (positives >= min_positives) & (negatives >= min_positives)
    chosen = np.where(own, np.argmin(np.where(counts > 0, sums, np.inf), axis=0), -1)
    rare = ~own & (counts > 0)
    shared_g = int(np.argmin(sums[:, rare].sum(axis=1))) if rare.any() else None
    chosen[~own] = 0 if shared_g is None else shared_g
    oof = oof_all[chosen, :, np.arange(n_labels)].T  # (N, L)
    coef, icpt = _members(x, y, known, fold_coef, fold_int, chosen, grid, members)
    return ProbeFit(
        coef=coef,
        intercept=icpt,
        members=members,
        folds=len(ids),
        Cs=grid,
        C=grid[chosen],
        shared=~own,
        shared_C=None if shared_g is None else float(grid[shared_g]),
        oof=oof,
        cv_loss=cv_loss,
        cv_auc=_aucs(y, oof),
        positives=positives,
        negatives=negatives,
    )


def _members(
    x: np.ndarray,
    y: np.ndarray,
    known: np.ndarray,
    fold_coef: np.ndarray,
    fold_int: np.ndarray,
    chosen: np.ndarray,
    grid: np.ndarray,
    members: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The output layer ``(coef (M*L, C), intercept (M*L,))``: the fold models at the
    chosen C (members = K), or one model refitted on all rows (members = 1)."""
    n_labels = y.shape[1]
    labels = np.arange(n_labels)
    if members > 1:
        coef = fold_coef[:, chosen, labels]  # (K, L, C)
        return coef.reshape(-1, x.shape[1]), fold_int[:, chosen, labels].reshape(-1)
    mu, sd = _standardiser(x)
    xs = (x - mu) / sd
    basis = row_basis(xs)
    z = xs if basis is None else xs @ basis
    coef = np.zeros((n_labels, x.shape[1]))
    icpt = np.zeros(n_labels)
    for j in range(n_labels):
        rows = known[:, j]
        if not rows.any():
            continue
        u, b = fit_logistic(z[rows], y[rows, j], float(grid[chosen[j]]))
        w = u if basis is None else basis @ u
        coef[j], icpt[j] = _raw(w, b, mu, sd)
    return coef, icpt


def _aucs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    from cxr.evaluation.metrics import roc_auc

    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j]) & ~np.isnan(p[:, j])
        t = y[ok, j]
        if 0 < t.sum() < len(t):
            out[j] = roc_auc(t, p[ok, j])
    return out
