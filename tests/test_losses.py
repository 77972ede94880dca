import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.losses import (
    LOSS_NAMES,
    BCELoss,
    FocalLoss,
    InverseFrequencyBCELoss,
    LossWeightWarning,
    PosWeightBCELoss,
    WeightedBCELoss,
    build_loss,
    class_frequencies,
    weighted_bce_from_probs,
)

NAN = float("nan")

TRAIN = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1]], dtype=np.float32)


def batch(seed=0, b=6, n=3, unknown=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(b, n, generator=g) < 0.4).double()
    if unknown:
        targets[torch.rand(b, n, generator=g) < unknown] = NAN
    return logits.requires_grad_(True), targets


def test_class_frequencies_test_vector():
    pos, neg = class_frequencies(TRAIN)
    np.testing.assert_allclose(pos, [0.8, 0.4, 0.8])
    np.testing.assert_allclose(neg, [0.2, 0.6, 0.2])


def test_class_frequencies_ignore_unknown():
    labels = np.array([[1, NAN, NAN], [0, 1, NAN], [NAN, 0, NAN], [1, 0, NAN]])
    pos, neg = class_frequencies(torch.tensor(labels))
    np.testing.assert_allclose(pos[:2], [2 / 3, 1 / 3])
    np.testing.assert_allclose(neg[:2], [1 / 3, 2 / 3])
    assert np.isnan(pos[2]) and np.isnan(neg[2])
    with pytest.raises(ValueError, match="column 1"):
        class_frequencies(np.array([[0, 2.0]]))
    with pytest.raises(ValueError, match="2-D"):
        class_frequencies(np.array([0, 1.0]))


@pytest.mark.parametrize("p", [0.7, 0.3])
def test_weighted_bce_from_probs_published_vector(p):
    y = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=np.float64)
    probs = np.full(y.shape, p)
    loss = weighted_bce_from_probs(
        probs, y, w_pos=[0.25, 0.25, 0.5], w_neg=[0.75, 0.75, 0.5], epsilon=1
    )
    assert loss.item() == pytest.approx(-0.4956203, abs=1e-7)


def test_weighted_bce_from_probs_masks_unknown_and_matches_hand_formula():
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.6], [0.1, 0.5]], dtype=torch.float64)
    y = torch.tensor([[1, NAN], [0, 1], [NAN, NAN]], dtype=torch.float64)
    wp, wn = [0.3, 0.6], [0.7, 0.4]
    eps = 1e-7
    col0 = -(wp[0] * np.log(0.9 + eps) + wn[0] * np.log(1 - 0.4 + eps)) / 2
    col1 = -(wp[1] * np.log(0.6 + eps)) / 1
    got = weighted_bce_from_probs(probs, y, wp, wn)
    assert got.item() == pytest.approx(col0 + col1, rel=1e-12)
    with pytest.raises(ValueError, match="one weight per label"):
        weighted_bce_from_probs(probs, y, [0.5], [0.5])


def test_weighted_bce_logits_equals_independent_computation():
    pos, neg = class_frequencies(TRAIN)
    loss_fn = WeightedBCELoss(neg, pos)
    logits, targets = batch()
    got = loss_fn(logits, targets)
    p = torch.sigmoid(logits)
    expected = sum(
        (
            neg[j] * F.binary_cross_entropy(p[:, j], targets[:, j], weight=targets[:, j])
            + pos[j] * F.binary_cross_entropy(p[:, j], targets[:, j], weight=1 - targets[:, j])
        )
        for j in range(3)
    )
    # (weights are float32 buffers, hence rel=1e-6)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # the same as the published formula on probabilities with epsilon 0
    assert got.item() == pytest.approx(
        weighted_bce_from_probs(p, targets, neg, pos, epsilon=0).item(), rel=1e-6
    )


def test_pos_weight_bce_equals_torch_bce_with_logits():
    logits, targets = batch(1)
    pw = torch.tensor([0.25, 1.5, 4.0], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw)
    assert PosWeightBCELoss(pw)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_inverse_frequency_weights_and_value():
    loss_fn = build_loss("inverse-frequency", TRAIN)
    assert isinstance(loss_fn, InverseFrequencyBCELoss)
    np.testing.assert_allclose(loss_fn.w_pos, [0.625, 1.25, 0.625], rtol=1e-6)
    np.testing.assert_allclose(loss_fn.w_neg, [2.5, 1 / 1.2, 2.5], rtol=1e-6)
    logits, targets = batch(2)
    weights = targets * loss_fn.w_pos.double() + (1 - targets) * loss_fn.w_neg.double()
    expected = F.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    assert loss_fn(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_loss_hand_written():
    logits, targets = batch(3)
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    for gamma, alpha in [(2.0, None), (1.5, 0.25), (0.0, None)]:
        a_t = 1.0 if alpha is None else torch.where(targets == 1, alpha, 1 - alpha)
        expected = (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()
        got = FocalLoss(gamma, alpha)(logits, targets)
        assert got.item() == pytest.approx(expected.item(), rel=1e-9), (gamma, alpha)
    assert FocalLoss(0.0)(logits, targets).item() == pytest.approx(
        BCELoss()(logits, targets).item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_unknown_targets_are_masked(name):
    loss_fn = build_loss(name, TRAIN).double()
    logits, targets = batch(4, b=8, unknown=0.3)
    known = ~torch.isnan(targets)
    assert known.any() and (~known).any()
    loss = loss_fn(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[~known], torch.zeros_like(logits.grad[~known]))
    # any value in the unknown positions gives the same loss
    for fill in (0.0, 1.0):
        filled = torch.where(known, targets, torch.full_like(targets, fill))
        other = loss_fn(logits.detach(), torch.where(known, filled, torch.full_like(targets, NAN)))
        assert other.item() == pytest.approx(loss.item(), rel=1e-12)
    # it equals the loss over the known entries only (per-label means for weighted-bce)
    if name != "weighted-bce":
        y0 = torch.where(known, targets, torch.zeros_like(targets))
        elem = {
            "bce": lambda: F.binary_cross_entropy_with_logits(logits, y0, reduction="none"),
            "pos-weight-bce": lambda: F.binary_cross_entropy_with_logits(
                logits, y0, pos_weight=loss_fn.w_pos.double(), reduction="none"
            ),
            "inverse-frequency": lambda: F.binary_cross_entropy_with_logits(
                logits,
                y0,
                weight=y0 * loss_fn.w_pos.double() + (1 - y0) * loss_fn.w_neg.double(),
                reduction="none",
            ),
            "focal": lambda: (
                (1 - torch.where(y0 == 1, torch.sigmoid(logits), 1 - torch.sigmoid(logits))) ** 2
                * F.binary_cross_entropy_with_logits(logits, y0, reduction="none")
            ),
        }[name]()
        assert loss.item() == pytest.approx(elem[known].mean().item(), rel=1e-9)
    else:
        per_label = [
            (
                loss_fn.w_pos[j] * targets[known[:, j], j] * -F.logsigmoid(logits[known[:, j], j])
                + loss_fn.w_neg[j]
                * (1 - targets[known[:, j], j])
                * -F.logsigmoid(-logits[known[:, j], j])
            ).mean()
            for j in range(3)
        ]
        assert loss.item() == pytest.approx(sum(per_label).item(), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_labels_without_known_entries_give_no_nan(name):
    loss_fn = build_loss(name, TRAIN)
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([[1, NAN, 0], [0, NAN, 1], [1, NAN, NAN], [0, NAN, 0]])
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[:, 1], torch.zeros(4))
    logits.grad = None
    nothing = loss_fn(logits, torch.full((4, 3), NAN))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.equal(logits.grad, torch.zeros(4, 3))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_extreme_logits_stay_finite(name):
    loss_fn = build_loss(name, TRAIN)
    logits = torch.tensor([[100.0, -100.0, 50.0], [-100.0, 100.0, -50.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 10 and torch.isfinite(logits.grad).all()


def test_build_loss_names_weights_and_errors():
    pos, neg = class_frequencies(TRAIN)
    weighted = build_loss("weighted-bce", TRAIN)
    assert isinstance(weighted, WeightedBCELoss)
    np.testing.assert_allclose(weighted.w_pos, neg, rtol=1e-6)  # w_pos = negative frequency
    np.testing.assert_allclose(weighted.w_neg, pos, rtol=1e-6)
    pw = build_loss("pos-weight-bce", TRAIN)
    np.testing.assert_allclose(pw.pos_weight, neg / pos, rtol=1e-6)
    focal = build_loss("focal", TRAIN, gamma=1.0, alpha=0.3)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0 and focal.alpha == 0.3
    assert isinstance(build_loss("bce", TRAIN), BCELoss)
    with pytest.raises(ValueError) as err:
        build_loss("hinge", TRAIN)
    assert all(n in str(err.value) for n in LOSS_NAMES)
    with pytest.raises(ValueError, match="gamma"):
        build_loss("weighted-bce", TRAIN, gamma=2.0)
    with pytest.raises(ValueError, match="label_names"):
        build_loss("weighted-bce", TRAIN, label_names=["a"])
    with pytest.raises(ValueError, match="built for 3 labels"):
        weighted(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batch, labels"):
        weighted(torch.zeros(2, 3), torch.zeros(3, 3))
    # weights are buffers: they follow .to(dtype) and appear in state_dict
    assert set(weighted.state_dict()) == {"w_pos", "w_neg"}
    assert weighted.double().w_pos.dtype == torch.float64


@pytest.mark.parametrize("name", ["weighted-bce", "pos-weight-bce", "inverse-frequency"])
def test_labels_without_positives_or_negatives_warn_and_stay_finite(name):
    labels = np.array([[1, 0, 1, NAN], [0, 0, 1, NAN], [1, 0, 1, NAN]])
    with pytest.warns(LossWeightWarning) as record:
        loss_fn = build_loss(name, labels, label_names=["A", "Hernia", "Effusion", "Unseen"])
    text = str(record[0].message)
    assert "'Hernia' (no positives)" in text and "'Effusion' (no negatives)" in text
    assert "'Unseen' (no known entries)" in text and "'A'" not in text
    for buf in loss_fn.buffers():
        assert torch.isfinite(buf).all()
    logits = torch.randn(3, 4, requires_grad=True)
    loss = loss_fn(logits, torch.tensor(labels, dtype=torch.float32))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_loss(name, TRAIN)  # a healthy label matrix warns about nothing
