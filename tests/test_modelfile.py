import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cxr
from cxr import modelfile
from cxr.modelfile import (
    FORMAT_VERSION,
    LoadedModel,
    ModelFileError,
    load_model,
    read_model_info,
    save_model,
    with_thresholds,
)
from cxr.models import HeadConfig, ModelSpec, Preprocessing, build_model

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")


def randomise_buffers(model):
    """BatchNorm statistics away from their defaults, so a round trip has to carry them."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, path) of a densenet121 model file at 64 px, with thresholds and a summary."""
    torch.manual_seed(0)
    model = randomise_buffers(
        build_model(ModelSpec(labels=LABELS, preprocessing=Preprocessing(size=64)))
    )
    path = tmp_path_factory.mktemp("saved") / "model.safetensors"
    training = {
        "epochs": np.int64(3),
        "val_auc": np.float32(0.5),
        "per_label": np.array([0.1, 0.2]),
    }
    save_model(path, model, thresholds={"Effusion": 0.3, "Atelectasis": 0.55}, training=training)
    return model, path


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "copy.safetensors"
    shutil.copyfile(saved[1], target)
    return target


def x64(b=2):
    return torch.rand(b, 1, 64, 64, generator=torch.Generator().manual_seed(9))


def rewrite_metadata(path, edit):
    """Rewrite the file with edited cxr metadata but the same tensors (keeping the hash)."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["cxr"])
    edit(meta)
    save_file(tensors, str(path), metadata={"cxr": json.dumps(meta)})


def test_round_trip_gives_identical_predictions(saved):
    model, path = saved
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    assert loaded.spec == model.spec and loaded.labels == LABELS
    assert loaded.thresholds == {"Atelectasis": 0.55, "Effusion": 0.3}
    assert loaded.training == {"epochs": 3, "val_auc": 0.5, "per_label": [0.1, 0.2]}
    assert loaded.cxr_version == cxr.__version__ and loaded.path == path
    with torch.no_grad():
        assert torch.equal(loaded.model(x64()), model(x64()))
    assert all(not t.is_meta for t in loaded.model.state_dict().values())
    assert loaded.model.get_submodule(loaded.model.target_layer) is not None


def test_round_trip_gem_head_with_hidden_layers(tmp_path):
    spec = ModelSpec(
        labels=("a", "b"),
        backbone="efficientnet-lite0",
        preprocessing=Preprocessing(size=64),
        head=HeadConfig(pool="gem", dropout=0.25, hidden=(32, 16)),
    )
    torch.manual_seed(1)
    model = randomise_buffers(build_model(spec))
    with torch.no_grad():
        model.head.pool.p.fill_(2.5)
    path = save_model(tmp_path / "sub" / "lite.safetensors", model)
    loaded = load_model(path, labels=["a", "b"])
    assert loaded.spec == spec and loaded.thresholds == {} and loaded.training == {}
    assert loaded.model.head.pool.p.item() == 2.5
    with torch.no_grad():
        assert torch.equal(loaded.model(x64(3)), model(x64(3)))


def test_file_is_plain_safetensors_with_cxr_metadata(saved):
    _, path = saved
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["cxr"])
        assert {"backbone.conv0.weight", "head.out.weight"} <= set(fh.keys())
    assert meta["format"] == "cxr-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["spec"] == ModelSpec(labels=LABELS, preprocessing=Preprocessing(size=64)).to_dict()
    assert len(meta["sha256"]) == 64


def test_read_model_info_does_not_build_the_model(saved, monkeypatch):
    monkeypatch.setattr(modelfile, "ChestClassifier", None)  # building would fail
    info = read_model_info(saved[1])
    assert info.spec.labels == LABELS and info.spec.backbone == "densenet121"
    assert info.thresholds["Effusion"] == 0.3 and info.format_version == FORMAT_VERSION


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load must not be used for model files")

    monkeypatch.setattr(torch, "load", refuse)
    assert load_model(saved[1]).spec.labels == LABELS


def test_with_thresholds_rewrites(copy, saved):
    out = with_thresholds(copy, {"Cardiomegaly": 0.42})
    assert out == copy
    loaded = load_model(copy)
    assert loaded.thresholds == {"Cardiomegaly": 0.42}
    assert loaded.training == load_model(saved[1]).training
    with torch.no_grad():
        assert torch.equal(loaded.model(x64()), saved[0](x64()))
    other = with_thresholds(copy, None, out=copy.with_name("cleared.safetensors"))
    assert read_model_info(other).thresholds == {} and read_model_info(copy).thresholds == {
        "Cardiomegaly": 0.42
    }
    with pytest.raises(ValueError, match="Pneumonia"):
        with_thresholds(copy, {"Pneumonia": 0.5})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        with_thresholds(copy, {"Effusion": 1.5})


def test_save_is_atomic_and_validates(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_model(path, model, training={"bad": object()})
    with pytest.raises(ValueError, match="Pneumonia"):
        save_model(path, model, thresholds={"Pneumonia": 0.5})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found") as err:
        load_model(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(err.value)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match="not a safetensors model file") as err:
        load_model(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"abc")
    with pytest.raises(ModelFileError, match="not a safetensors"):
        read_model_info(path)


def test_truncated(copy):
    data = copy.read_bytes()
    copy.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match="truncated") as err:
        load_model(copy)
    assert str(copy) in str(err.value)
    copy.write_bytes(data[:200])  # cut inside the header
    with pytest.raises(ModelFileError, match="truncated"):
        read_model_info(copy)


def test_flipped_byte_in_tensor_data(copy):
    data = bytearray(copy.read_bytes())
    data[-1000] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="integrity check") as err:
        load_model(copy)
    assert "SHA-256" in str(err.value) and str(copy) in str(err.value)


def test_edited_metadata(copy):
    rewrite_metadata(copy, lambda m: m["thresholds"].update(Effusion=0.01))
    with pytest.raises(ModelFileError, match="integrity check"):
        load_model(copy)
    rewrite_metadata(copy, lambda m: m["spec"].update(labels=["A", "B", "C"]))
    with pytest.raises(ModelFileError, match="integrity check"):
        with_thresholds(copy, {})
    rewrite_metadata(copy, lambda m: m.pop("sha256"))
    with pytest.raises(ModelFileError, match="no sha256"):
        load_model(copy)


def test_wrong_labels(saved):
    with pytest.raises(ModelFileError) as err:
        load_model(saved[1], labels=["Atelectasis", "Effusion", "Pneumonia"])
    text = str(err.value)
    assert "other labels" in text and str(saved[1]) in text
    assert "missing from the model: ['Pneumonia']" in text
    assert "in the model but not expected: ['Cardiomegaly']" in text
    with pytest.raises(ModelFileError, match="another order"):
        load_model(saved[1], labels=list(reversed(LABELS)))


def test_not_a_cxr_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"other": "x"})
    with pytest.raises(ModelFileError, match="not a cxr model file"):
        load_model(path)


def test_newer_format_and_unknown_backbone(copy):
    rewrite_metadata(copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="newer cxr") as err:
        load_model(copy)
    assert "upgrade cxr" in str(err.value)
    rewrite_metadata(copy, lambda m: m.update(format_version=FORMAT_VERSION))
    rewrite_metadata(copy, lambda m: m["spec"].update(backbone="resnet9000"))
    with pytest.raises(ModelFileError, match="unknown backbone 'resnet9000'") as err:
        read_model_info(copy)
    assert "densenet121" in str(err.value)  # lists the known ones


def test_model_of_a_backbone_this_cxr_does_not_know(tmp_path, monkeypatch):
    from torch import nn

    from cxr.models import registry

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=32, padding=1)

        def forward(self, x):
            return self.conv(x)

    known = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", dict(known))
    registry.register_backbone("tiny-plugin", lambda: registry.Backbone(Tiny(), 4, "conv"))
    path = save_model(
        tmp_path / "tiny.safetensors", build_model(ModelSpec(labels=("a",), backbone="tiny-plugin"))
    )
    assert load_model(path).spec.backbone == "tiny-plugin"
    monkeypatch.setattr(registry, "_REGISTRY", known)  # as in a cxr without that plugin
    with pytest.raises(ModelFileError, match="unknown backbone 'tiny-plugin'") as err:
        load_model(path)
    assert str(path) in str(err.value) and "efficientnet-lite0" in str(err.value)


# format version 1 (before the preprocessing record) -----------------------------------------
def write_v1_file(path, model, fit=None):
    """A model file as cxr wrote it before format 2: input size, mean and std at the top of
    the spec, the fit (when recorded) in the training summary; same SHA-256 rule."""
    import hashlib

    from safetensors.torch import save as st_save

    spec = model.spec
    meta = {
        "format": "cxr-model",
        "format_version": 1,
        "spec": {
            "labels": list(spec.labels),
            "backbone": spec.backbone,
            "input_size": spec.input_size,
            "head": spec.head.to_dict(),
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "thresholds": {"Effusion": 0.4},
        "training": {} if fit is None else {"fit": fit},
        "cxr_version": "0.1.0",
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}|{t.dtype!s}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    meta["sha256"] = h.hexdigest()
    path.write_bytes(st_save(tensors, metadata={"cxr": json.dumps(meta)}))
    return path


@pytest.mark.parametrize("fit", [None, "crop"])
def test_a_format_1_file_still_loads_and_predicts_the_same(tmp_path, fit):
    from cxr.inference import Predictor

    torch.manual_seed(1)
    model = build_model(
        ModelSpec(
            labels=LABELS,
            backbone="cxr-small-cnn",
            preprocessing=Preprocessing(size=48, fit=fit or "pad"),
        )
    ).eval()
    old = write_v1_file(tmp_path / "v1.safetensors", model, fit)
    new = save_model(tmp_path / "v2.safetensors", model, thresholds={"Effusion": 0.4})
    info = read_model_info(old)
    assert info.format_version == 1
    assert (info.spec.input_size, info.spec.fit) == (48, fit or "pad")  # no fit recorded: pad
    assert info.spec == read_model_info(new).spec
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    p_old = Predictor(old).predict_arrays(pixels)
    np.testing.assert_array_equal(p_old, Predictor(new).predict_arrays(pixels))
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(pixels)[:, None].float() / 255)).numpy()
    np.testing.assert_allclose(p_old, direct, atol=1e-6)
    # a rewrite (e.g. new thresholds) upgrades the file to the current format
    with_thresholds(old, {"Effusion": 0.5})
    assert read_model_info(old).format_version == FORMAT_VERSION == 2
    assert load_model(old).spec.fit == (fit or "pad")
