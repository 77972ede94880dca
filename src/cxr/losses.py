"""Multi-label losses on logits, with unknown labels masked out.

Conventions for every loss module here:

- ``logits``: (B, L) float, raw scores (``sigmoid(logits)`` = probability of each label).
- ``targets``: (B, L) float, 1 = present, 0 = absent, NaN = unknown. Unknown entries
  contribute nothing to the loss or its gradient; a batch in which a label (or every
  label) has no known entry gives a finite loss, never NaN.
- Class weights come from the *training* labels (:func:`class_frequencies`) and are fixed
  when the loss is built (:func:`build_loss`); :func:`prior_shift` is the log-odds shift
  those weights put into the logits, which calibration undoes.

Reductions: :class:`WeightedBCELoss` follows the published weighted-BCE formula (mean over
the known entries of each label, summed over labels); all other losses average over all
known entries of the batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_NAMES",
    "BCELoss",
    "FocalLoss",
    "InverseFrequencyBCELoss",
    "LossWeightWarning",
    "PosWeightBCELoss",
    "WeightedBCELoss",
    "build_loss",
    "class_frequencies",
    "prior_shift",
    "weighted_bce_from_probs",
]

#: Names accepted by :func:`build_loss`; the first is the default.
LOSS_NAMES: tuple[str, ...] = (
    "weighted-bce",
    "pos-weight-bce",
    "inverse-frequency",
    "focal",
    "bce",
)


class LossWeightWarning(UserWarning):
    """A label's class weight could not be computed from the training labels."""


def class_frequencies(labels: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-label frequency of positives and negatives among known entries.

    Args:
        labels: (N, L) 0/1 with NaN = unknown (soft labels in [0, 1] count fractionally).

    Returns:
        ``(pos, neg)``: float64 arrays (L,), ``pos + neg = 1``; both NaN for a label
        with no known entry.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    y = y.astype(np.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be 2-D (images, labels), got shape {y.shape}")
    known = ~np.isnan(y)
    bad = known & ((y < 0) | (y > 1))
    if bad.any():
        col = int(np.argwhere(bad)[0][1])
        raise ValueError(f"labels must be 0/1 (NaN = unknown); found {y[bad][0]!r} in column {col}")
    count = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(count > 0, np.where(known, y, 0.0).sum(axis=0) / count, np.nan)
    return pos, 1.0 - pos


def _as_tensor(x: np.ndarray | Tensor | Sequence[float], like: Tensor | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


def _split_targets(
    logits: Tensor, targets: Tensor, num_labels: int | None
) -> tuple[Tensor, Tensor]:
    """Validate shapes; return (y with unknowns replaced by 0, known mask as float)."""
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            "logits and targets must both be (batch, labels); "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if num_labels is not None and logits.shape[1] != num_labels:
        raise ValueError(f"the loss was built for {num_labels} labels but got {logits.shape[1]}")
    targets = targets.to(dtype=logits.dtype)
    known = ~torch.isnan(targets)
    return torch.where(known, targets, torch.zeros_like(targets)), known.to(logits.dtype)


def _mean_known(loss: Tensor, known: Tensor) -> Tensor:
    """Mean of ``loss`` over known entries; 0 (with gradient path) when none are known."""
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def weighted_bce_from_probs(
    probs: Tensor | np.ndarray,
    targets: Tensor | np.ndarray,
    w_pos: Tensor | np.ndarray | Sequence[float],
    w_neg: Tensor | np.ndarray | Sequence[float],
    epsilon: float = 1e-7,
) -> Tensor:
    """The published weighted BCE on probabilities.

    ``loss = -sum_l mean_b( w_pos[l] y log(p + eps) + w_neg[l] (1 - y) log(1 - p + eps) )``
    with ``w_pos`` = frequency of negatives and ``w_neg`` = frequency of positives; the mean
    is over known (non-NaN) entries of each label. probs, targets: (B, L); weights: (L,).
    Returns a scalar tensor.
    """
    p = _as_tensor(probs)
    if not p.is_floating_point():
        p = p.double()
    y, known = _split_targets(p, _as_tensor(targets, like=p), None)
    wp, wn = _as_tensor(w_pos, like=p), _as_tensor(w_neg, like=p)
    if wp.shape != (p.shape[1],) or wn.shape != (p.shape[1],):
        raise ValueError(f"w_pos and w_neg must have one weight per label ({p.shape[1]},)")
    per_entry = wp * y * torch.log(p + epsilon) + wn * (1 - y) * torch.log(1 - p + epsilon)
    per_label = (per_entry * known).sum(dim=0) / known.sum(dim=0).clamp(min=1.0)
    return -per_label.sum()


class _WeightedLogitBCE(nn.Module):
    """``w_pos * y * -log sigmoid(z) + w_neg * (1 - y) * -log sigmoid(-z)`` per entry."""

    w_pos: Tensor  # registered buffers
    w_neg: Tensor

    def __init__(
        self,
        w_pos: Sequence[float] | np.ndarray | Tensor,
        w_neg: Sequence[float] | np.ndarray | Tensor,
    ) -> None:
        super().__init__()
        wp = _as_tensor(w_pos).float().reshape(-1)
        wn = _as_tensor(w_neg).float().reshape(-1)
        if wp.shape != wn.shape or not torch.isfinite(wp).all() or not torch.isfinite(wn).all():
            raise ValueError(
                "w_pos and w_neg must be finite, one weight per label, of equal length"
            )
        self.register_buffer("w_pos", wp)
        self.register_buffer("w_neg", wn)

    def _entries(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        y, known = _split_targets(logits, targets, self.w_pos.numel())
        wp, wn = self.w_pos.to(logits.dtype), self.w_neg.to(logits.dtype)
        loss = wp * y * -F.logsigmoid(logits) + wn * (1 - y) * -F.logsigmoid(-logits)
        return loss, known


class WeightedBCELoss(_WeightedLogitBCE):
    """Weighted BCE on logits: ``w_pos`` = negative frequency, ``w_neg`` = positive
    frequency per label; mean over each label's known entries, summed over labels
    (the logits form of :func:`weighted_bce_from_probs` with epsilon = 0)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss, known = self._entries(logits, targets)
        return ((loss * known).sum(dim=0) / known.sum(dim=0).clamp(min=1.0)).sum()


class InverseFrequencyBCELoss(_WeightedLogitBCE):
    """BCE with ``w_pos = 1 / (2 pos_freq)``, ``w_neg = 1 / (2 neg_freq)`` (a balanced
    label gets weight 1 for both); mean over known entries."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss, known = self._entries(logits, targets)
        return _mean_known(loss, known)


class PosWeightBCELoss(_WeightedLogitBCE):
    """BCE-with-logits with ``pos_weight = negatives / positives`` per label (as
    ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``); mean over known entries."""

    def __init__(self, pos_weight: Sequence[float] | np.ndarray | Tensor) -> None:
        pw = _as_tensor(pos_weight).float().reshape(-1)
        super().__init__(pw, torch.ones_like(pw))

    @property
    def pos_weight(self) -> Tensor:
        return self.w_pos

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss, known = self._entries(logits, targets)
        return _mean_known(loss, known)


class BCELoss(nn.Module):
    """Plain BCE-with-logits, mean over known entries."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split_targets(logits, targets, None)
        return _mean_known(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), known)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``alpha_t (1 - p_t)^gamma * BCE``, mean over known entries.

    ``p_t`` = probability given to the true class; ``alpha_t = alpha`` for positives and
    ``1 - alpha`` for negatives, or 1 for both when ``alpha`` is None. gamma = 0 and
    alpha = None is plain BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"focal loss gamma must be a finite number >= 0, got {gamma!r}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal loss alpha must be in [0, 1] or None, got {alpha!r}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split_targets(logits, targets, None)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = (1 - p_t).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        return _mean_known(loss, known)


def _degenerate_mask(pos: np.ndarray) -> np.ndarray:
    """(L,) mask of labels without positives, negatives or known entries."""
    return ~np.isfinite(pos) | (pos <= 0) | (pos >= 1)


def _degenerate(pos: np.ndarray, names: Sequence[str], loss: str) -> np.ndarray:
    """Mask of labels without positives, negatives or known entries; warns naming them."""
    bad = _degenerate_mask(pos)
    if bad.any():
        parts = []
        for i in np.flatnonzero(bad):
            why = (
                "no known entries"
                if not np.isfinite(pos[i])
                else ("no positives" if pos[i] <= 0 else "no negatives")
            )
            parts.append(f"{names[int(i)]!r} ({why})")
        warnings.warn(
            f"{loss}: training labels give no class weight for {', '.join(parts)}; "
            "a neutral weight is used for them. Check the training split.",
            LossWeightWarning,
            stacklevel=3,
        )
    return bad


def build_loss(
    name: str,
    train_labels: np.ndarray | Tensor,
    *,
    label_names: Sequence[str] | None = None,
    **options: float | None,
) -> nn.Module:
    """A loss module by name, with class weights from the training labels.

    Args:
        name: one of :data:`LOSS_NAMES` (``"weighted-bce"`` is the usual default).
        train_labels: (N, L) 0/1/NaN labels of the training split.
        label_names: L names, used in warnings (default ``column <i>``).
        options: ``gamma`` and ``alpha`` for ``"focal"``; no other loss takes options.

    Labels with no positives (or no negatives, or nothing known) in ``train_labels`` get a
    neutral weight (0.5/0.5, pos_weight 1, or 1/1) and a :class:`LossWeightWarning`.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    allowed = {"focal": {"gamma", "alpha"}}.get(name, set())
    extra = sorted(set(options) - allowed)
    if extra:
        raise ValueError(
            f"loss {name!r} does not take option(s) {extra}; it takes {sorted(allowed) or 'none'}"
        )
    pos, neg = class_frequencies(train_labels)
    names = (
        list(label_names) if label_names is not None else [f"column {i}" for i in range(pos.size)]
    )
    if len(names) != pos.size:
        raise ValueError(
            f"label_names has {len(names)} names but train_labels has {pos.size} columns"
        )
    if name == "focal":
        gamma = options.get("gamma")
        return FocalLoss(gamma=2.0 if gamma is None else float(gamma), alpha=options.get("alpha"))
    if name == "bce":
        return BCELoss()
    w_pos, w_neg = _class_weights(name, pos, neg, _degenerate(pos, names, name))
    if name == "weighted-bce":
        return WeightedBCELoss(w_pos, w_neg)
    if name == "pos-weight-bce":
        return PosWeightBCELoss(w_pos)
    return InverseFrequencyBCELoss(w_pos, w_neg)


def _class_weights(
    name: str, pos: np.ndarray, neg: np.ndarray, bad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(w_pos, w_neg), each (L,), of the class-weighted loss ``name`` from the label
    frequencies ``pos``, ``neg`` (L,); labels in the mask ``bad`` get neutral weights.
    ``pos-weight-bce``'s w_neg is 1 (its pos_weight is w_pos)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "weighted-bce":
            return np.where(bad, 0.5, neg), np.where(bad, 0.5, pos)
        if name == "pos-weight-bce":
            return np.where(bad, 1.0, neg / pos), np.ones_like(pos)
        if name == "inverse-frequency":
            return np.where(bad, 1.0, 0.5 / pos), np.where(bad, 1.0, 0.5 / neg)
    raise ValueError(f"{name!r} has no class weights")


def prior_shift(loss: str, train_labels: np.ndarray | Tensor) -> np.ndarray:
    """The log-odds each label's logits are shifted by at the optimum of ``loss``.

    A loss that weighs positive entries by ``w+`` and negative ones by ``w-`` is minimised,
    for images whose true probability is ``q``, by ``sigmoid(z) = w+ q / (w+ q + w- (1 -
    q))``: the logit is ``logit(q) + log(w+ / w-)``. ``sigmoid(z - shift)`` recovers ``q``.
    The weights are those :func:`build_loss` builds from the same labels, so:

    - ``weighted-bce`` (w+ = negative, w- = positive frequency),
      ``pos-weight-bce`` (pos_weight = negatives / positives) and ``inverse-frequency``
      (w+ = 1 / (2 pos), w- = 1 / (2 neg)) all give ``log(negatives / positives)``;
    - ``bce``: 0;
    - ``focal``: 0. Its optimum has no closed form (the ``(1 - p_t)^gamma`` factor pulls
      probabilities toward 0.5 by an amount that depends on ``q``), so no shift is undone
      and the calibration map alone corrects it.

    Labels with no positives, no negatives or nothing known get 0 (build_loss gives them
    neutral weights; no warning here, build_loss gives it).

    Args:
        loss: one of :data:`LOSS_NAMES`.
        train_labels: (N, L) 0/1/NaN labels of the training split.

    Returns:
        float64 (L,) shifts in log-odds (natural log).
    """
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_NAMES)}")
    pos, neg = class_frequencies(train_labels)
    if loss in ("bce", "focal"):
        return np.zeros(pos.size)
    w_pos, w_neg = _class_weights(loss, pos, neg, _degenerate_mask(pos))
    return np.log(w_pos / w_neg)
