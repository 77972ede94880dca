"""Grad-CAM without autograd (cxr.explain.cam): equal to torch Grad-CAM where the head allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.cache import PreparedCache
from cxr.explain import (
    CamUnavailable,
    cam_maps,
    check_cam_head,
    explain,
    grad_cam_maps,
    resize_bilinear,
)
from cxr.modelfile import load_model
from cxr.modelformat.onnx_metadata import HeadWeights
from cxr.models import HeadConfig, ModelSpec, Preprocessing, build_model


def head_of(model) -> HeadWeights:
    pool = model.head.pool
    gem = model.spec.head.pool == "gem"
    return HeadWeights(
        model.spec.head.pool,
        model.head.out.weight.detach().numpy(),
        model.head.out.bias.detach().numpy(),
        float(pool.p.detach().clamp(min=1)) if gem else 1.0,
        float(pool.eps) if gem else 1e-6,
    )


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize(("h", "w", "size"), [(5, 7, (64, 50)), (16, 16, (64, 64)), (7, 7, (3, 9))])
def test_resize_is_torch_bilinear(h, w, size):
    maps = np.random.default_rng(0).random((3, h, w)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear")[0].numpy()
    np.testing.assert_allclose(resize_bilinear(maps, size), ref, atol=1e-5, rtol=0)


def test_cam_equals_grad_cam_for_an_average_pooling_head():
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=("A", "B", "C"),
        backbone="cxr-small-cnn",
        head=HeadConfig(pool="avg"),
        preprocessing=Preprocessing(size=32),
    )
    model = build_model(spec).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        features = model.features(x).numpy()
    for method in ("gradcam", "gradcam++"):
        ref = grad_cam_maps(model, x, [0, 1, 2, 1], method)
        got = cam_maps(features, head_of(model), [0, 1, 2, 1], (32, 32), method)
        np.testing.assert_allclose(got.heatmaps, ref.heatmaps, atol=1e-4)
        np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-5)
        np.testing.assert_array_equal(got.constant, ref.constant)


def test_cam_maps_match_grad_cam_on_the_phantom_model(trained_phantom_model, phantom_caches_64):
    """The trained phantom model has a GeM head: its gradient has a closed form too."""
    model = load_model(trained_phantom_model.best_model).model
    pixels = PreparedCache(phantom_caches_64["test"]).read(np.arange(8))
    x = torch.from_numpy(pixels).float()[:, None] / 255
    with torch.no_grad():
        features = model.features(x).numpy()
    for method in ("gradcam", "gradcam++"):
        for label in range(model.spec.num_labels):
            ref = grad_cam_maps(model, x, label, method)
            got = cam_maps(features, head_of(model), label, (64, 64), method)
            np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-5)
            for a, b, flat in zip(got.heatmaps, ref.heatmaps, ref.constant, strict=True):
                if not flat:
                    assert corr(a, b) >= 0.999
            np.testing.assert_allclose(got.heatmaps, ref.heatmaps, atol=1e-3)


def test_explanations_of_the_onnx_export_match_torch_grad_cam(
    trained_phantom_model, phantom_caches_64, tmp_path
):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cxr.explain import explain_onnx
    from cxr.export import export_onnx
    from cxr.inference import OnnxBackend

    out = tmp_path / "phantom.onnx"
    export_onnx(trained_phantom_model.best_model, out, check=phantom_caches_64["test"])
    backend = OnnxBackend(out)
    model = load_model(trained_phantom_model.best_model).model
    pixels = PreparedCache(phantom_caches_64["test"]).read(np.arange(0, 40, 5))
    compared = 0
    for image in pixels:
        for method in ("gradcam", "gradcam++"):
            got = explain_onnx(backend, image, top_k=3, method=method)
            ref = explain(model, image, top_k=3, method=method)
            assert [e.label for e in got] == [e.label for e in ref]
            for a, b in zip(got, ref, strict=True):
                assert abs(a.probability - b.probability) <= 1e-4
                assert bool(a.note) == bool(b.note)
                if not b.note:
                    assert corr(a.heatmap, b.heatmap) >= 0.99
                    compared += 1
    assert compared >= 20
    named = explain_onnx(backend, pixels[0], labels=["Effusion", "Mass"])
    assert [e.label for e in named] == ["Effusion", "Mass"]


def test_heads_without_the_identity_are_refused(tmp_path, capsys):
    with pytest.raises(CamUnavailable, match=r"hidden layers \[8\]"):
        check_cam_head(HeadConfig(hidden=(8,)), None, "m.onnx")
    with pytest.raises(CamUnavailable, match="no classifier weights"):
        check_cam_head(HeadConfig(), None)
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from cxr.cli import main as cxr_main
    from cxr.export import export_onnx
    from cxr.modelfile import save_model

    spec = ModelSpec(
        labels=("A", "B"),
        backbone="cxr-small-cnn",
        head=HeadConfig(hidden=(8,)),
        preprocessing=Preprocessing(size=32),
    )
    onnx_file = tmp_path / "hidden.onnx"
    export_onnx(save_model(tmp_path / "hidden.safetensors", build_model(spec).eval()), onnx_file)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(image)
    argv = ["predict", str(onnx_file), str(image), "--explain", str(tmp_path / "ex")]
    assert cxr_main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hidden layers" in err and ".safetensors" in err
    assert not (tmp_path / "ex").exists()
    # without --explain the model predicts
    assert cxr_main(["predict", str(onnx_file), str(image), "--no-progress"]) == 0
