"""Test-time augmentation modes (cxr.inference.tta): none / flip / all, the Predictor's use of
them, and a model file's recommended mode (``tta`` in its header, safetensors and ONNX)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from cxr.cli.options import add_tta
from cxr.inference import Predictor
from cxr.inference.tta import TTA_MODES, describe_views, tta_mode, tta_shift, tta_views
from cxr.modelfile import (
    load_model,
    read_model_info,
    save_model,
    with_thresholds,
    with_tta,
)
from cxr.models import ModelSpec, Preprocessing, build_model

LABELS = ("Effusion", "Mass")


def model_file(tmp_path, tta=None, name="m.safetensors"):
    torch.manual_seed(0)
    spec = ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=32))
    model = build_model(spec).eval()
    with torch.no_grad():  # a head that makes the probabilities depend on the image
        model.head.out.weight.mul_(50.0)
    return save_model(tmp_path / name, model, tta=tta)


def pixels(b=3, side=32, seed=0):
    """uint8 (b, side, side), not left-right symmetric."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, side)[None, None, :]
    return (ramp + rng.uniform(0, 55, (b, side, side))).astype(np.uint8)


def by_hand(path, images, views):
    """Mean over ``views`` (functions of a float batch) of the torch model's probabilities."""
    model = load_model(path).model
    x = torch.from_numpy(images)[:, None].float() / 255.0
    with torch.no_grad():
        return torch.stack([torch.sigmoid(model(v(x))) for v in views]).mean(0).numpy()


# the views ---------------------------------------------------------------------------------
def test_the_views_of_each_mode():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    assert TTA_MODES == ("none", "flip", "all")
    (only,) = tta_views(x, "none")
    assert only is x
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and flip[0] is x and torch.equal(flip[1], x.flip(-1))
    every = tta_views(x, "all")
    assert len(every) == 6 and torch.equal(every[1], x.flip(-1))
    assert all(torch.equal(a, b) for a, b in zip(tta_views(x), every, strict=True))  # default
    assert len(tta_views(x, True)) == 6 and len(tta_views(x, False)) == 1
    arr = x.numpy().astype(np.uint8)
    np_flip = tta_views(arr, "flip")
    assert np_flip[1].dtype == np.uint8 and np.array_equal(np_flip[1], arr[..., ::-1])


@pytest.mark.parametrize("bad", ["FLIP", "mirror", "", 1, None, 2.0])
def test_a_bad_mode_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"tta must be one of none, flip, all") as err:
        tta_mode(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="TTA mode"):
        tta_views(np.zeros((1, 32, 32)), bad)


def test_modes_in_words():
    assert (tta_mode(True), tta_mode(False), tta_mode("flip")) == ("all", "none", "flip")
    assert describe_views("none", 64) == "original only"
    assert describe_views("flip", 64) == "original, mirror"
    assert f"shifts of {tta_shift(64)} px" in describe_views("all", 64)


# the predictor -----------------------------------------------------------------------------
def test_flip_averages_exactly_the_original_and_its_mirror(tmp_path):
    path = model_file(tmp_path)
    images = pixels()
    predictor = Predictor(path, tta="flip", batch_size=2)
    seen = []
    real = predictor.backend.probabilities
    predictor.backend.probabilities = lambda p: seen.append(p.shape) or real(p)  # type: ignore[method-assign]
    got = predictor.predict_arrays(images)
    assert len(seen) == 4  # 2 batches x 2 views
    expected = by_hand(path, images, [lambda v: v, lambda v: v.flip(-1)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    plain = Predictor(path, tta="none").predict_arrays(images)
    every = Predictor(path, tta="all").predict_arrays(images)
    assert np.abs(got - plain).max() > 1e-4 and np.abs(got - every).max() > 1e-4
    described = predictor.describe()
    assert described["tta_mode"] == "flip" and described["tta"] is True
    assert described["tta_views"] == "original, mirror" and described["tta_source"] == "caller"


def test_true_and_false_keep_their_old_meaning(tmp_path):
    path = model_file(tmp_path)
    assert Predictor(path, tta=True).tta == "all" and Predictor(path, tta=False).tta == "none"
    default = Predictor(path)  # a file without a recommendation
    assert default.tta == "none" and default.tta_source == "default"
    assert default.describe()["tta_views"] == "original only"
    with pytest.raises(ValueError, match="tta must be one of"):
        Predictor(path, tta="sideways")


def test_the_model_files_mode_is_used_unless_one_is_chosen(tmp_path):
    path = model_file(tmp_path, tta="flip")
    images = pixels(b=2)
    default = Predictor(path)
    assert default.tta == "flip" and default.tta_source == "model file"
    described = default.describe()
    assert described["tta_mode"] == "flip" and "recommended by" in described["tta_views"]
    flipped = by_hand(path, images, [lambda v: v, lambda v: v.flip(-1)])
    np.testing.assert_allclose(default.predict_arrays(images), flipped, atol=1e-6)
    chosen = Predictor(path, tta="none")
    assert chosen.tta == "none" and chosen.tta_source == "caller"
    np.testing.assert_allclose(
        chosen.predict_arrays(images), by_hand(path, images, [lambda v: v]), atol=1e-6
    )
    assert Predictor(path, tta=False).tta == "none" and Predictor(path, tta="all").tta == "all"
    text = default.predict_images([]).to_text()
    assert "TTA flip" in text
    assert "TTA off" in chosen.predict_images([]).to_text()


# the model file ----------------------------------------------------------------------------
def test_save_model_stores_a_valid_mode_only(tmp_path):
    plain = model_file(tmp_path, name="plain.safetensors")
    assert read_model_info(plain).tta == "none"
    assert "tta" not in read_model_info(plain).stored()  # absent = none: files unchanged
    flip = model_file(tmp_path, tta="flip", name="flip.safetensors")
    assert read_model_info(flip).tta == "flip" and load_model(flip).tta == "flip"
    assert read_model_info(flip).stored()["tta"] == "flip"
    model = load_model(flip).model
    for bad in ("sideways", True, 2):
        with pytest.raises(ValueError, match=r"field 'tta'.*'none', 'flip', 'all'"):
            save_model(tmp_path / "bad.safetensors", model, tta=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.safetensors").exists()


def test_with_tta_rewrites_and_other_rewrites_keep_it(tmp_path):
    path = model_file(tmp_path)
    out = with_tta(path, "all", tmp_path / "all.safetensors")
    assert read_model_info(out).tta == "all" and read_model_info(path).tta == "none"
    kept = with_thresholds(out, {"Mass": 0.3}, tmp_path / "kept.safetensors")
    assert read_model_info(kept).tta == "all" and read_model_info(kept).thresholds
    cleared = with_tta(kept, None, tmp_path / "cleared.safetensors")
    assert read_model_info(cleared).tta == "none"
    with pytest.raises(ValueError, match=r"tta for model file .*field 'tta'"):
        with_tta(path, "upside-down")


def test_the_recommended_mode_travels_into_the_onnx_file(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cxr.export import export_onnx, read_onnx_info
    from cxr.modelformat.onnx_metadata import META_KEY

    path = model_file(tmp_path, tta="flip")
    out = tmp_path / "m.onnx"
    export_onnx(path, out)
    info = read_onnx_info(out)
    assert info.tta == "flip" and info.header["tta"] == "flip"
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props[META_KEY])["tta"] == "flip"
    images = pixels(b=2)
    onnx_predictor = Predictor(out)
    assert onnx_predictor.tta == "flip" and onnx_predictor.tta_source == "model file"
    np.testing.assert_allclose(
        onnx_predictor.predict_arrays(images), Predictor(path).predict_arrays(images), atol=1e-5
    )
    assert Predictor(out, tta="none").tta == "none"
    plain = model_file(tmp_path, name="plain.safetensors")
    export_onnx(plain, tmp_path / "plain.onnx")
    assert read_onnx_info(tmp_path / "plain.onnx").tta == "none"
    assert "tta" not in read_onnx_info(tmp_path / "plain.onnx").header


# the command line --------------------------------------------------------------------------
def test_the_tta_option():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("inputs", nargs="*")
    add_tta(parser)
    assert parser.parse_args(["a.png"]).tta is None  # the model file's mode
    assert parser.parse_args(["a.png", "--tta"]).tta == "all"  # bare: all, as before
    for mode in TTA_MODES:
        assert parser.parse_args(["--tta", mode, "a.png"]).tta == mode
    with pytest.raises(argparse.ArgumentError, match=r"takes none, flip, all, got 'b\.png'"):
        parser.parse_args(["--tta", "b.png"])


def test_cxr_predict_takes_the_mode_or_the_model_files(tmp_path, capsys):
    from PIL import Image

    from cxr.cli import main as cxr_main

    path = model_file(tmp_path, tta="flip")
    image = tmp_path / "x.png"
    Image.fromarray(pixels(b=1, side=40)[0]).save(image)

    def run(*extra):
        assert cxr_main(["predict", str(path), str(image), "--no-progress", *extra]) == 0
        return capsys.readouterr().out

    model = json.loads(run("--format", "json"))["model"]
    assert model["tta_mode"] == "flip" and model["tta_source"] == "model file"
    model = json.loads(run("--format", "json", "--tta", "none"))["model"]
    assert model["tta_mode"] == "none" and model["tta_source"] == "caller"
    assert json.loads(run("--format", "json", "--tta"))["model"]["tta_mode"] == "all"
    assert "TTA flip" in run()
    with pytest.raises(SystemExit) as err:  # argparse's usage error
        cxr_main(["predict", str(path), "--tta", str(image)])
    assert err.value.code == 2 and "takes none, flip, all" in capsys.readouterr().err
