"""The ONNX Runtime backend: same predictions as torch, refusals, and no torch imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cxr.cache import PreparedCache  # noqa: E402
from cxr.cli import main as cxr_main  # noqa: E402
from cxr.evaluation.predictions import read_predictions  # noqa: E402
from cxr.export import OnnxFileError, export_onnx  # noqa: E402
from cxr.inference import BACKENDS, OnnxBackend, Predictor, TorchBackend, open_backend  # noqa: E402
from cxr.modelfile import load_model  # noqa: E402
from cxr.modelformat.onnx_metadata import OnnxNotInstalled  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def models(trained_phantom_model, phantom_caches_64, tmp_path_factory):
    """(torch model file, its fp32 ONNX export) of the trained phantom model."""
    out = tmp_path_factory.mktemp("onnx_backend") / "phantom.onnx"
    export_onnx(trained_phantom_model.best_model, out, check=phantom_caches_64["val"])
    return trained_phantom_model.best_model, out


@pytest.fixture(scope="module")
def images(phantom_caches_64):
    """Ten held-out phantom PNGs (originals at 128 px, decoded and fitted to 64 px)."""
    table = PreparedCache(phantom_caches_64["test"]).table
    return [str(p) for p in table.paths[:10]]


def test_onnx_is_picked_by_the_file_name(models):
    torch_file, onnx_file = models
    assert BACKENDS == ("torch", "onnx")
    assert isinstance(open_backend(onnx_file), OnnxBackend)
    assert isinstance(open_backend(torch_file), TorchBackend)
    with pytest.raises(ValueError, match="ONNX file; run it with backend 'onnx'"):
        open_backend(onnx_file, "torch")
    with pytest.raises(TypeError, match="path of a .onnx file"):
        open_backend(load_model(torch_file), "onnx")


def test_predict_images_match_torch(models, images):
    torch_file, onnx_file = models
    for tta in (False, True):
        a = Predictor(torch_file, tta=tta).predict_images(images)
        b = Predictor(onnx_file, tta=tta).predict_images(images)
        assert a.labels == b.labels and a.thresholds == b.thresholds and b.thresholds
        assert len(b.predicted) == len(images)
        np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=TOL)
        # the same records: rankings, flags and headlines
        da, db = a.to_dict(), b.to_dict()
        for ia, ib in zip(da["images"], db["images"], strict=True):
            assert ia["above_threshold"] == ib["above_threshold"]
            assert ia["top_finding"]["label"] == ib["top_finding"]["label"]
    assert b.model["backend"] == "onnx" and b.model["precision"] == "fp32"


def test_predict_cache_and_features_match_torch(models, phantom_caches_64):
    torch_file, onnx_file = models
    # the backends' own outputs (a calibration map can stretch 1e-4 near 0 and 1)
    pt, po = Predictor(torch_file, calibrated=False), Predictor(onnx_file, calibrated=False)
    cache = phantom_caches_64["test"]
    np.testing.assert_allclose(po.predict_cache(cache), pt.predict_cache(cache), atol=TOL, rtol=0)
    pixels = PreparedCache(cache).read(np.arange(6))
    (p_t, f_t), (p_o, f_o) = pt.backend.features(pixels), po.backend.features(pixels)
    assert f_o.shape == f_t.shape == (6, load_model(torch_file).model.num_features)
    np.testing.assert_allclose(p_o, p_t, atol=TOL, rtol=0)
    np.testing.assert_allclose(f_o, f_t, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(p_o, po.predict_arrays(pixels), atol=1e-6, rtol=0)


def test_cli_predict_and_evaluate_on_onnx_match_torch(models, images, phantom_caches_64, tmp_path):
    torch_file, onnx_file = models
    outs = {}
    for name, model in (("torch", torch_file), ("onnx", onnx_file)):
        out = tmp_path / f"{name}.json"
        argv = ["predict", str(model), *images, "--format", "json", "--out", str(out), "--raw"]
        assert cxr_main([*argv, "--no-progress"]) == 0
        outs[name] = json.loads(out.read_text())
        report = tmp_path / f"eval_{name}"
        argv = ["evaluate", str(phantom_caches_64["test"]), "--model", str(model), "--raw"]
        assert cxr_main([*argv, "--bootstrap", "0", "--out", str(report), "--no-progress"]) == 0
    for a, b in zip(outs["torch"]["images"], outs["onnx"]["images"], strict=True):
        for label, p in a["probabilities"].items():
            assert abs(b["probabilities"][label] - p) <= TOL
    pa = read_predictions(tmp_path / "eval_torch" / "predictions.csv")
    pb = read_predictions(tmp_path / "eval_onnx" / "predictions.csv")
    np.testing.assert_allclose(pb.probs, pa.probs, atol=TOL, rtol=0)


def test_a_tampered_onnx_file_is_refused(models, tmp_path, capsys):
    data = bytearray(models[1].read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a weight
    bad = tmp_path / "tampered.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(OnnxFileError, match="integrity check"):
        OnnxBackend(bad)
    assert cxr_main(["predict", str(bad), str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tampered.onnx" in err and "integrity check" in err


def test_an_onnx_file_edited_by_another_tool_is_refused(models, tmp_path):
    import onnx

    same = tmp_path / "same.onnx"
    onnx.save(onnx.load(str(models[1])), str(same))  # byte for byte the same file: accepted
    assert same.read_bytes() == models[1].read_bytes()
    OnnxBackend(same)
    for name, edit in (
        ("doc", lambda m: setattr(m, "doc_string", "edited")),
        ("extra", lambda m: m.metadata_props.add(key="note", value="added")),
    ):
        proto = onnx.load(str(models[1]))
        edit(proto)
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        with pytest.raises(OnnxFileError, match="integrity check"):
            OnnxBackend(tmp_path / f"{name}.onnx")


def test_a_foreign_onnx_file_is_refused_with_a_clear_message(tmp_path, capsys):
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Conv2d(1, 2, 3), (torch.zeros(1, 1, 8, 8),), str(foreign), dynamo=False
        )
    with pytest.raises(OnnxFileError, match="no cxr metadata"):
        OnnxBackend(foreign)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 100)
    with pytest.raises(OnnxFileError, match="not an ONNX model file"):
        OnnxBackend(junk)
    assert cxr_main(["predict", str(foreign), str(tmp_path), "--no-progress"]) == 2
    assert "not a cxr ONNX model" in capsys.readouterr().err


def test_precision_and_device_are_checked(models):
    with pytest.raises(ValueError, match="fp32 ONNX graph .* torch models only"):
        Predictor(models[1], precision="bf16")
    with pytest.raises(ValueError, match="device must be"):
        OnnxBackend(models[1], device="tpu")


def test_a_missing_onnxruntime_says_how_to_install_it(models, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    with pytest.raises(OnnxNotInstalled, match=r"pip install 'cxr\[onnx\]'"):
        OnnxBackend(models[1])
    assert cxr_main(["predict", str(models[1]), str(models[1].parent), "--no-progress"]) == 2
    assert "pip install 'cxr[onnx]'" in capsys.readouterr().err


def test_the_onnx_predict_path_imports_no_torch(models, images, tmp_path):
    """`cxr predict model.onnx` (and --explain) in a fresh process: no torch, no MONAI."""
    script = textwrap.dedent(
        f"""
        import sys
        from cxr.cli import main
        rc = main(["predict", {str(models[1])!r}, {images[0]!r}, "--no-progress",
                   "--explain", {str(tmp_path / "ex")!r}, "--top-k", "1"])
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "monai", "onnx"}})
        print("RESULT", rc, ",".join(heavy))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT"))
    assert line.split(" ", 2)[1:] == ["0", ""], run.stdout + run.stderr
    assert len(list((tmp_path / "ex").glob("*.png"))) == 1
