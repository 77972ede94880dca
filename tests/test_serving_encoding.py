"""What the service sends: PNGs and the explanation body (cxr.serving.encoding), and the
JSON records of predictions and the model (cxr.serving.answers)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from cxr import RESEARCH_NOTICE  # noqa: E402
from cxr.explain import Explanation, heatmap_rgba, overlay  # noqa: E402
from cxr.inference import ImagePrediction  # noqa: E402
from cxr.serving.answers import json_safe, ood_report, prediction_body  # noqa: E402
from cxr.serving.encoding import b64png, explanation_body, png  # noqa: E402


def decode(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im)


def test_png_is_lossless():
    rng = np.random.default_rng(0)
    for shape in ((9, 7), (9, 7, 3), (9, 7, 4)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(decode(png(pixels)), pixels)
        assert np.array_equal(decode(b64png(pixels, level=6)), pixels)


def test_explanation_body():
    display = np.full((32, 32), 100, np.uint8)
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 4:8] = 1.0
    found = [
        Explanation("Mass", 0.7, heat, "gradcam++"),
        Explanation("Effusion", 0.2, heat, "gradcam++", note="constant"),
    ]
    body = explanation_body("a.png", display, found, {"Mass": 0.6}, 16)
    assert body["notice"] == RESEARCH_NOTICE and body["path"] == "a.png"
    assert body["method"] == "gradcam++" and body["input_size"] == 16
    assert body["display_size"] == 32
    assert np.array_equal(decode(body["image_png"]), display)
    mass, effusion = body["explanations"]
    assert (mass["threshold"], mass["above_threshold"]) == (0.6, True)
    assert (effusion["threshold"], effusion["above_threshold"]) == (None, None)
    assert effusion["note"] == "constant"
    assert np.array_equal(decode(mass["heatmap_png"]), heatmap_rgba(heat))
    assert np.array_equal(decode(mass["overlay_png"]), overlay(display, heat))
    assert explanation_body("a.png", display, [], {}, 16)["method"] == "gradcam"


def test_heatmap_rgba():
    heat = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    rgba = heatmap_rgba(heat)
    assert rgba.shape == (2, 2, 4) and rgba.dtype == np.uint8
    assert rgba[..., 3].tolist() == [[0, 128], [255, 0]]  # alpha = the heatmap
    hot = overlay(np.zeros((2, 2), np.uint8), heat, alpha=1.0)[1, 0]  # all colour where 1
    assert np.array_equal(rgba[1, 0, :3], hot)


def test_prediction_body_and_ood():
    items = [
        ImagePrediction("a.png", np.array([0.2, 0.9], np.float32)),
        ImagePrediction("b.png", None, "truncated", "the file ends early"),
    ]
    body = prediction_body(("A", "B"), {"B": 0.5}, items, {"backbone": "x"})
    (image,) = body["images"]
    assert [r["label"] for r in image["ranked"]] == ["B", "A"]
    assert image["ranked"][0]["above_threshold"] is True
    assert image["ranked"][1]["threshold"] is None
    assert image["ood"] == {"available": False, "flag": None, "score": None}
    assert image["notice"] == RESEARCH_NOTICE
    assert [s["path"] for s in body["skipped"]] == ["b.png"]
    flagged = ImagePrediction("c.png", np.array([0.1, 0.2]), ood_score=float("nan"), ood_flag=1)
    assert ood_report(flagged) == {"available": True, "flag": True, "score": None}


def test_json_safe():
    value = {1: (np.float32(1.5), float("nan"), np.int64(3)), "x": [math.inf, "s", None]}
    assert json_safe(value) == {"1": [1.5, None, 3], "x": [None, "s", None]}
