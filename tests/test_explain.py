"""Grad-CAM / Grad-CAM++ (cxr.explain): every backbone, the formula, labels, PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr import RESEARCH_NOTICE
from cxr.explain import (
    CONSTANT_NOTE,
    Explanation,
    explain,
    explanation_figure,
    grad_cam,
    grad_cam_maps,
    overlay,
    save_explanation_png,
)
from cxr.models import (
    ModelSpec,
    Preprocessing,
    build_model,
    freeze_backbone,
    list_backbones,
)

LABELS = ("Cardiomegaly", "Effusion", "Mass")


def make_model(backbone: str = "cxr-small-cnn", size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        ModelSpec(labels=LABELS, backbone=backbone, preprocessing=Preprocessing(size=size))
    ).eval()


def image(size: int = 64, seed: int = 1) -> np.ndarray:
    """A smooth uint8 (size, size) test image with a bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blob = np.exp(-((yy - 0.6) ** 2 + (xx - 0.3) ** 2) / 0.01)
    img = 0.3 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.4 * blob + 0.05 * rng.random((size, size))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_gives_maps_at_input_resolution(backbone):
    model = make_model(backbone)
    exps = explain(model, image(), top_k=2)
    assert [type(e) for e in exps] == [Explanation, Explanation]
    for e in exps:
        assert e.heatmap.shape == (64, 64) and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0
        assert e.heatmap.max() == pytest.approx(1.0) or e.note == CONSTANT_NOTE
        assert 0.0 <= e.probability <= 1.0
    # most probable first
    assert exps[0].probability >= exps[1].probability
    # batch with one label per image, both methods
    x = torch.from_numpy(np.stack([image(seed=1), image(seed=2)]))[:, None].float() / 255
    for method in ("gradcam", "gradcam++"):
        maps = grad_cam(model, x, [0, 2], method=method)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32


def test_grad_cam_matches_the_formula_for_an_average_pooled_linear_head():
    model = make_model()
    x = torch.from_numpy(image())[None, None].float() / 255
    label = 1
    with torch.no_grad():
        feats = model.features(x)  # (1, C, h, w)
    w = model.head.out.weight[label].detach()  # d logit / d A_cij = w_c / (h * w)
    cam = torch.relu((w[None, :, None, None] * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    cam = ((cam - cam.min()) / (cam.max() - cam.min())).numpy()
    got = grad_cam(model, x, label)[0]
    assert np.abs(got - cam).max() < 1e-4


def test_grad_cam_plus_plus_differs_from_grad_cam():
    model = make_model()
    x = torch.from_numpy(image())[None, None].float() / 255
    a = grad_cam(model, x, 0, "gradcam")[0]
    b = grad_cam(model, x, 0, "gradcam++")[0]
    assert np.abs(a - b).max() > 0.05


def test_heatmap_changes_with_the_requested_label():
    """A head set by hand: label 1 is the opposite of label 0, label 2 uses other channels."""
    model = make_model()
    out = model.head.out
    with torch.no_grad():
        c = out.weight.shape[1]
        w = torch.randn(c, generator=torch.Generator().manual_seed(3))
        out.weight[0] = w
        out.weight[1] = -w
        out.weight[2] = torch.where(torch.arange(c) % 2 == 0, w.abs(), torch.zeros_like(w))
    exps = {e.label: e.heatmap for e in explain(model, image(), labels=list(LABELS))}
    assert corr(exps["Cardiomegaly"], exps["Effusion"]) < 0.5
    assert corr(exps["Cardiomegaly"], exps["Mass"]) < 0.99
    again = explain(model, image(), labels=["Cardiomegaly"])[0].heatmap
    assert np.allclose(again, exps["Cardiomegaly"], atol=1e-5)  # alone or in a batch: the same


def test_constant_map_becomes_zeros_with_a_note():
    model = make_model()
    with torch.no_grad():  # features are >= 0 (post-ReLU): all-negative weights -> relu(...) = 0
        model.head.out.weight[0] = -model.head.out.weight[0].abs() - 0.01
    e = explain(model, image(), labels=["Cardiomegaly"])[0]
    assert not e.heatmap.any() and e.note == CONSTANT_NOTE
    maps = grad_cam_maps(model, torch.from_numpy(image())[None, None] / 255.0, 0)
    assert maps.constant.tolist() == [True]


def test_model_state_is_left_alone():
    model = make_model().train()
    with torch.no_grad():
        model.head.out.weight[2].abs_()  # a map that is not constant
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(image())[None, None] / 255.0
    maps = grad_cam(model, x, 2)
    assert maps.shape == (1, 64, 64) and maps.max() == pytest.approx(1.0)
    assert model.training and model.backbone.training  # mode restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched
    assert all(p.grad is None for p in model.parameters())
    freeze_backbone(model)  # no gradients for the backbone's parameters: still works
    assert np.allclose(grad_cam(model, x, 2), maps, atol=1e-5)


def test_non_square_input_and_bad_arguments():
    model = make_model()
    x = torch.rand(1, 1, 64, 96)
    assert grad_cam(model, x, 0).shape == (1, 64, 96)
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, x, 3)
    with pytest.raises(ValueError, match="one index per image"):
        grad_cam(model, x, [0, 1])
    with pytest.raises(ValueError, match="method"):
        grad_cam(model, x, 0, method="saliency")
    with pytest.raises(ValueError, match="float"):
        grad_cam(model, torch.zeros(1, 1, 64, 64, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match=r"\['Nodule'\].*Cardiomegaly"):
        explain(model, image(), labels=["Nodule"])
    with pytest.raises(ValueError, match="top_k"):
        explain(model, image(), top_k=4)
    with pytest.raises(ValueError, match="uint8"):
        explain(model, image().astype(np.float32))
    with pytest.raises(TypeError, match="ChestClassifier"):
        explain(torch.nn.Linear(2, 2), image())


def test_overlay_and_png(tmp_path):
    img = image()
    heat = np.zeros((64, 64), np.float32)
    heat[10:20, 30:40] = 1.0
    rgb = overlay(img, heat)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[50, 5], np.repeat(img[50, 5], 3))  # cold: the gray image
    assert not np.array_equal(rgb[15, 35], np.repeat(img[15, 35], 3))  # hot: coloured
    e = Explanation("Effusion", 0.8712, heat, "gradcam++")
    fig = explanation_figure(img, e, source="/data/patient_0042/view1.png", threshold=0.5)
    texts = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes]
    texts += [fig._suptitle.get_text()] if fig._suptitle else []
    assert any("Effusion: p = 0.87 (threshold 0.50: reached)" in t for t in texts), texts
    assert any(RESEARCH_NOTICE in t for t in texts)
    assert "view1.png" in texts  # the file name over the image
    assert len(fig.axes) == 3  # image, overlay and the overlay's colour bar
    assert "relevance" in fig.axes[2].get_ylabel()
    below = explanation_figure(img, Explanation("Effusion", 0.2, heat), threshold=0.31)
    assert "(threshold 0.31: not reached)" in below._suptitle.get_text()
    path = save_explanation_png(tmp_path / "sub" / "x.png", img, e)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 2 * png.size[1] * 0.8
    with pytest.raises(ValueError, match="uint8"):
        save_explanation_png(tmp_path / "y.png", img.astype(float), e)


def test_cli_knows_the_same_methods():
    from cxr import explain
    from cxr.cli import options as cli_options  # the --method option of every command

    assert cli_options.CAM_METHODS == explain.CAM_METHODS
