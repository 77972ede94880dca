"""Ensemble heads (``HeadConfig.members``): K member output layers in one Linear, member-major,
averaged in probability; through the model file, the ONNX export and Grad-CAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr.modelfile import load_model, read_model_info, save_model
from cxr.models import HeadConfig, ModelSpec, Preprocessing, build_model, ensemble_logits

LABELS = ("Effusion", "Mass")


def small(members=1, pool="avg", hidden=(), size=32, seed=0):
    torch.manual_seed(seed)
    spec = ModelSpec(
        labels=LABELS,
        backbone="cxr-small-cnn",
        head=HeadConfig(pool=pool, hidden=hidden, members=members),
        preprocessing=Preprocessing(size=size),
    )
    return build_model(spec).eval()


def gray(b=3, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g)


def stack_members(model, members_out):
    """Set an ensemble model's output layer from K (weight (L, C), bias (L,)) pairs,
    member-major (member m in rows m*L..(m+1)*L-1)."""
    with torch.no_grad():
        model.head.out.weight.copy_(torch.cat([w for w, _ in members_out]))
        model.head.out.bias.copy_(torch.cat([b for _, b in members_out]))
    return model


# the spec ----------------------------------------------------------------------------------
def test_members_default_to_one_and_round_trip():
    assert HeadConfig().members == 1
    assert "members" not in HeadConfig().to_dict()  # a plain head's record is unchanged
    head = HeadConfig(pool="gem", members=np.int64(5))
    assert head.members == 5 and type(head.members) is int
    data = json.loads(json.dumps(head.to_dict()))
    assert data["members"] == 5 and HeadConfig.from_dict(data) == head
    old = {"pool": "avg", "dropout": 0.0, "hidden": []}  # a file written before members
    assert HeadConfig.from_dict(old).members == 1
    spec = ModelSpec(labels=LABELS, head=head)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, True, "3", None])
def test_members_must_be_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match=r"head\.members .*whole number >= 1") as err:
        HeadConfig(members=bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match=r"head\.members"):
        ModelSpec.from_dict({"labels": ["a"], "head": {"members": bad}})


# the head ----------------------------------------------------------------------------------
def test_the_output_layer_is_one_linear_of_k_times_l_rows():
    model = small(members=3, hidden=(16,))
    assert model.head.out.weight.shape == (3 * len(LABELS), 16)
    assert model.head.out.bias.shape == (3 * len(LABELS),)
    with torch.no_grad():
        assert model(gray()).shape == (3, len(LABELS))


def test_one_member_is_exactly_the_plain_head():
    model = small(members=1, pool="gem")
    x = gray()
    with torch.no_grad():
        feats = model.features(x)
        plain = model.head.out(model.head.mlp(model.head.pool(feats)))
        assert torch.equal(model(x), plain)
    z = torch.randn(4, 2)
    assert ensemble_logits(z, 1) is z


def test_k_identical_members_equal_their_single_member():
    single = small(members=1)
    ensemble = small(members=4)
    ensemble.load_state_dict(
        {k: v for k, v in single.state_dict().items() if not k.startswith("head.out")},
        strict=False,
    )
    w, b = single.head.out.weight.detach(), single.head.out.bias.detach()
    stack_members(ensemble, [(w, b)] * 4)
    x = gray(b=5)
    with torch.no_grad():
        p1, pk = torch.sigmoid(single(x)), torch.sigmoid(ensemble(x))
    torch.testing.assert_close(pk, p1, atol=1e-6, rtol=0)


def test_the_output_is_the_mean_of_the_member_probabilities():
    model = small(members=3, pool="gem")
    with torch.no_grad():  # members far apart, so that the mean is not any one of them
        model.head.out.weight.mul_(torch.tensor([1.0, 1.0, 8.0, 8.0, -20.0, -20.0])[:, None])
        model.head.out.bias.copy_(torch.tensor([2.0, -1.0, -3.0, 0.5, 0.0, 4.0]))
    x = gray(b=4)
    with torch.no_grad():
        pooled = model.head.pool(model.features(x))
        z = model.head.out(model.head.mlp(pooled))  # (B, 3 * 2), member-major
        by_hand = torch.stack([torch.sigmoid(z[:, 2 * m : 2 * m + 2]) for m in range(3)]).mean(0)
        got = torch.sigmoid(model(x))
    torch.testing.assert_close(got, by_hand, atol=1e-6, rtol=0)
    assert (got - torch.sigmoid(z[:, :2])).abs().max() > 1e-3  # not member 0 alone


def test_the_average_is_finite_for_extreme_logits():
    z = torch.tensor([[-300.0, 400.0, -150.0, 200.0, -1e4, 1e4]])  # 3 members, 2 labels
    out = ensemble_logits(z, 3)
    assert torch.isfinite(out).all()
    mean_p = torch.sigmoid(z.double()).view(1, 3, 2).mean(1)
    torch.testing.assert_close(torch.sigmoid(out).double(), mean_p, atol=1e-7, rtol=0)


def test_grad_cam_is_the_map_of_the_averaged_output():
    from cxr.explain import grad_cam_maps
    from cxr.explain.maps import heatmaps_from_gradients

    model = small(members=2, size=64, seed=3)
    with torch.no_grad():
        model.head.out.weight.mul_(40.0)
    x = gray(b=1, size=64, seed=5)
    maps = grad_cam_maps(model, x, label_index=1)
    with torch.no_grad():
        acts = model.features(x)
        z = model.head.out(model.head.pool(acts))  # (1, 4): member 0 [0:2], member 1 [2:4]
    # avg pooling: d ensemble / d A = sum_m (d ensemble / d z_m) W_m / (h w) in every cell
    z = z.clone().requires_grad_(True)
    (dz,) = torch.autograd.grad(ensemble_logits(z, 2)[0, 1], z)
    weight = model.head.out.weight.detach()
    cells = acts.shape[-1] * acts.shape[-2]
    per_channel = (dz[0, 1] * weight[1] + dz[0, 3] * weight[3]) / cells
    grads = per_channel[None, :, None, None].expand_as(acts)
    expected, _ = heatmaps_from_gradients(acts.numpy(), grads.numpy(), "gradcam", (64, 64))
    np.testing.assert_allclose(maps.heatmaps, expected, atol=1e-5)
    member0 = weight[1][None, :, None, None].expand_as(acts) / cells
    alone, _ = heatmaps_from_gradients(acts.numpy(), member0.numpy(), "gradcam", (64, 64))
    assert np.abs(alone - expected).max() > 1e-3  # not one member's map
    with torch.no_grad():
        expected_p = torch.sigmoid(model(x))[0, 1].item()
    assert maps.probabilities[0] == pytest.approx(expected_p, abs=1e-6)


# downstream --------------------------------------------------------------------------------
def test_an_ensemble_model_file_round_trips(tmp_path):
    model = small(members=3, pool="gem", hidden=(8,))
    path = save_model(tmp_path / "ens.safetensors", model, {"Mass": 0.3})
    assert read_model_info(path).spec.head.members == 3
    loaded = load_model(path)
    assert loaded.spec == model.spec and loaded.model.head.out.out_features == 6
    x = gray()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_an_ensemble_exports_to_one_onnx_graph_that_agrees_with_torch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cxr.explain import CamUnavailable, check_cam_head
    from cxr.export import export_onnx, read_onnx_info
    from cxr.inference import Predictor

    model = small(members=3)
    with torch.no_grad():
        model.head.out.weight.mul_(30.0)  # confident, disagreeing members
    path = save_model(tmp_path / "ens.safetensors", model)
    report = export_onnx(path, tmp_path / "ens.onnx")
    assert max(report.parity.values()) <= 1e-4
    info = read_onnx_info(tmp_path / "ens.onnx")
    assert info.spec.head.members == 3 and info.head is None  # no closed-form CAM weights
    with pytest.raises(CamUnavailable, match="3 members"):
        check_cam_head(info.spec.head, info.head, info.path)
    pixels = (gray(b=5).numpy()[:, 0] * 255).astype(np.uint8)
    onnx_probs = Predictor(tmp_path / "ens.onnx").predict_arrays(pixels)
    torch_probs = Predictor(path).predict_arrays(pixels)
    assert onnx_probs.shape == (5, 2)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
