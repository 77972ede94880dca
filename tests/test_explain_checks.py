"""The pieces both heatmap paths share: the input checks (cxr.explain.checks), the formula
from activations and gradients to maps (cxr.explain.maps) and the records (cxr.explain.records)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.explain.checks import check_method, choose_labels, label_indices
from cxr.explain.maps import channel_weights, heatmaps_from_gradients, resize_bilinear
from cxr.explain.records import CONSTANT_NOTE, CamMaps, explanations_of

NAMES = ("A", "B", "C")


def test_method_and_label_indices():
    assert check_method("gradcam++") == "gradcam++"
    with pytest.raises(ValueError, match=r"method must be one of \['gradcam', 'gradcam\+\+'\]"):
        check_method("saliency")
    assert label_indices(2, 3, 4) == [2, 2, 2]
    assert label_indices(np.int64(1), 2, 4) == [1, 1]
    assert label_indices([0, 3], 2, 4) == [0, 3]
    with pytest.raises(ValueError, match="bool"):
        label_indices(True, 1, 4)
    with pytest.raises(ValueError, match="one index per image needed, got 1 for 2 images"):
        label_indices([0], 2, 4)
    with pytest.raises(ValueError, match=r"label_index 4 is out of range.*0 to 3"):
        label_indices([0, 4], 2, 4)


def test_choose_labels_by_name_or_top_k():
    probs = np.array([0.2, 0.9, 0.2])
    calls = []

    def probabilities() -> np.ndarray:
        calls.append(1)
        return probs

    assert choose_labels(NAMES, None, 2, probabilities) == [1, 0]  # ties: the first first
    assert choose_labels(NAMES, ["C", "A"], 1, probabilities) == [2, 0]
    assert choose_labels(NAMES, "B", 1, probabilities) == [1]
    assert choose_labels(NAMES, [], 1, probabilities) == []
    assert len(calls) == 1  # probabilities only when ranking
    with pytest.raises(ValueError, match=r"labels \['Z'\] are not labels of the model"):
        choose_labels(NAMES, ["A", "Z"], 1, probabilities)
    for bad in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="top_k must be an integer from 1 to 3"):
            choose_labels(NAMES, None, bad, probabilities)  # type: ignore[arg-type]


def test_resize_is_torch_bilinear():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 5, 7))
    for size in ((20, 28), (64, 64), (5, 7), (3, 9)):
        ref = F.interpolate(
            torch.from_numpy(maps)[:, None], size=size, mode="bilinear", align_corners=False
        )[:, 0].numpy()
        got = resize_bilinear(maps, size)
        assert got.shape == (2, *size) and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-6


def test_the_formula():
    rng = np.random.default_rng(1)
    acts = rng.random((2, 4, 3, 3))
    grads = rng.normal(size=(2, 4, 3, 3))
    assert np.allclose(channel_weights(acts, grads, "gradcam"), grads.mean(axis=(2, 3)))
    plus = channel_weights(acts, grads, "gradcam++")
    g2, g3 = grads**2, grads**3
    alpha = g2 / (2 * g2 + acts.sum(axis=(2, 3), keepdims=True) * g3)
    assert np.allclose(plus, (alpha * np.maximum(grads, 0)).sum(axis=(2, 3)))
    maps, constant = heatmaps_from_gradients(acts, grads, "gradcam", (6, 6))
    cam = np.maximum((grads.mean(axis=(2, 3))[:, :, None, None] * acts).sum(1), 0)
    cam = resize_bilinear(cam, (6, 6)).astype(np.float64)
    for b in range(2):
        if not constant[b]:
            want = (cam[b] - cam[b].min()) / (cam[b].max() - cam[b].min())
            assert np.abs(maps[b] - want).max() < 1e-5
            assert maps[b].min() == 0.0 and maps[b].max() == pytest.approx(1.0)
    # a map that nothing raised: zeros, flagged
    zero, flags = heatmaps_from_gradients(acts, -np.abs(grads), "gradcam", (6, 6))
    assert flags.tolist() == [True, True] and not zero.any() and zero.dtype == np.float32


def test_explanations_of_maps():
    maps = CamMaps(
        np.zeros((2, 4, 4), np.float32), np.array([0.25, 0.75], np.float32), np.array([1, 0], bool)
    )
    out = explanations_of(NAMES, [2, 0], maps, "gradcam++")
    assert [(e.label, e.probability, e.method) for e in out] == [
        ("C", 0.25, "gradcam++"),
        ("A", 0.75, "gradcam++"),
    ]
    assert out[0].note == CONSTANT_NOTE and out[1].note == ""
