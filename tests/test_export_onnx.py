"""ONNX export (cxr.export, ``cxr export``): parity with torch, metadata, int8, refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cxr import RESEARCH_NOTICE, __version__  # noqa: E402
from cxr.cache import PreparedCache, prepare  # noqa: E402
from cxr.cli import main as cxr_main  # noqa: E402
from cxr.export import ExportError, export_onnx, read_onnx_info  # noqa: E402
from cxr.export import onnx as onnx_export  # noqa: E402
from cxr.modelfile import load_model, read_model_info, save_model  # noqa: E402
from cxr.modelformat.onnx_metadata import HEAD_KEY, META_KEY, OUTPUT_NAMES  # noqa: E402
from cxr.models import HeadConfig, ModelSpec, Preprocessing, build_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(trained_phantom_model, phantom_caches_64, tmp_path_factory):
    """The trained phantom model (small CNN, GeM head, 64 px) exported to fp32 ONNX, with
    the test cache as parity images: (model path, onnx path, report)."""
    out = tmp_path_factory.mktemp("onnx") / "phantom.onnx"
    model = trained_phantom_model.best_model
    report = export_onnx(model, out, check=phantom_caches_64["test"])
    return model, out, report


def small_model_file(tmp_path, hidden=(), pool="avg", name="small.safetensors"):
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=("Effusion", "Mass"),
        backbone="cxr-small-cnn",
        head=HeadConfig(pool=pool, hidden=hidden),
        preprocessing=Preprocessing(size=32),
    )
    return save_model(tmp_path / name, build_model(spec).eval(), {"Mass": 0.4}, {"epochs": 1})


# parity ------------------------------------------------------------------------------------
def test_export_checks_parity_at_batch_1_and_8(exported, phantom_caches_64):
    _, out, report = exported
    assert out.is_file() and report.path == out
    assert set(report.parity) == {1, 8}
    assert max(report.parity.values()) <= 1e-4
    assert report.precision == "fp32" and report.opset == onnx_export.DEFAULT_OPSET
    assert str(phantom_caches_64["test"]) in report.parity_images  # real (cached) images
    text = report.to_text()
    assert "batch 1 max |Δp|" in text and "batch 8" in text and RESEARCH_NOTICE in text


def test_a_parity_failure_writes_no_file(tmp_path, monkeypatch):
    model = small_model_file(tmp_path)
    real = onnx_export._onnx_probs
    monkeypatch.setattr(onnx_export, "_onnx_probs", lambda s, p: real(s, p) + 1e-3)
    with pytest.raises(ExportError, match=r"parity check failed.*1\.00e-03"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert not list(tmp_path.glob(".bad.onnx*"))  # no temporary file left behind


def test_phantom_images_are_used_without_a_cache(tmp_path):
    report = export_onnx(small_model_file(tmp_path), tmp_path / "m.onnx")
    assert "phantom" in report.parity_images
    assert max(report.parity.values()) <= 1e-4


# metadata ----------------------------------------------------------------------------------
def test_the_whole_header_round_trips(exported):
    model, out, _ = exported
    loaded, info = load_model(model), read_onnx_info(out)
    assert info.spec == loaded.spec
    assert info.thresholds == loaded.thresholds and info.thresholds
    assert info.training == json.loads(json.dumps(loaded.training))
    assert info.precision == "fp32" and info.cxr_version == __version__
    assert info.header["notice"] == RESEARCH_NOTICE
    assert info.source["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert info.source["integrity_sha256"] == read_model_info(model).sha256
    assert info.source["cxr_version"] == loaded.cxr_version
    assert info.header["graph"]["outputs"] == list(OUTPUT_NAMES)
    # the head's weights, for CAM without autograd
    assert info.head is not None and info.head.pool == "gem"
    np.testing.assert_array_equal(info.head.weight, loaded.model.head.out.weight.detach().numpy())
    np.testing.assert_array_equal(info.head.bias, loaded.model.head.out.bias.detach().numpy())
    assert info.head.p == pytest.approx(float(loaded.model.head.pool.p.detach().clamp(min=1)))


def test_the_onnx_metadata_is_readable_by_onnx_and_the_graph_has_a_dynamic_batch(exported):
    import onnx

    proto = onnx.load(str(exported[1]))
    props = {p.key: p.value for p in proto.metadata_props}
    assert {META_KEY, HEAD_KEY, "cxr.integrity"} <= set(props)
    assert json.loads(props[META_KEY])["spec"]["labels"] == list(read_onnx_info(exported[1]).labels)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    onnx.checker.check_model(proto)


def test_a_head_with_hidden_layers_exports_without_cam_weights(tmp_path):
    out = tmp_path / "hidden.onnx"
    export_onnx(small_model_file(tmp_path, hidden=(8,)), out)
    info = read_onnx_info(out)
    assert info.head is None and info.spec.head.hidden == (8,)


# int8 --------------------------------------------------------------------------------------
def test_int8_is_calibrated_and_checked_on_a_labelled_cache(exported, phantom_caches_64, tmp_path):
    model = exported[0]
    c = phantom_caches_64
    out = tmp_path / "int8.onnx"
    report = export_onnx(
        model, out, quantize="int8", calibrate=c["val"], check=c["test"], calibration_images=32
    )
    info = read_onnx_info(out)
    assert info.precision == "int8" and report.precision == "int8"
    assert report.quantization and report.quantization["images"] == 32
    auc = report.auc_check
    assert auc is not None and auc["images"] == len(PreparedCache(c["test"]))
    assert 0.5 < auc["macro_auc_fp32"] <= 1 and abs(auc["drop"]) <= onnx_export.MAX_AUC_DROP
    assert set(report.int8_parity) == {1, 8}
    assert "macro AUC" in report.to_text()
    assert info.header["export"]["auc_check"]["macro_auc_int8"] == auc["macro_auc_int8"]


def test_an_int8_auc_drop_is_refused_unless_forced(tmp_path, phantom_caches_64, monkeypatch):
    model = small_model_file(tmp_path)
    # phantom images at 64 px: a 32 px model needs a 32 px cache
    table = PreparedCache(phantom_caches_64["val"]).table
    cache = tmp_path / "cache32"
    prepare(table.subset(np.arange(40)), cache, 32, workers=1, progress=False)
    monkeypatch.setattr(onnx_export, "MAX_AUC_DROP", -1.0)  # every int8 graph "drops" too much
    out = tmp_path / "q.onnx"
    with pytest.raises(ExportError, match=r"macro AUC .* not written \(--force"):
        export_onnx(model, out, quantize="int8", calibrate=cache)
    assert not out.exists()
    report = export_onnx(model, out, quantize="int8", calibrate=cache, force=True)
    assert out.is_file() and report.auc_check and report.auc_check["forced"]
    assert any("calibration cache" in n for n in report.notes)


def test_bad_options_are_refused(tmp_path):
    model = small_model_file(tmp_path)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=7)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="calibration cache"):
        export_onnx(model, tmp_path / "m.onnx", quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(model, tmp_path / "m.onnx", quantize="int4")


def test_a_cache_of_another_size_is_refused(exported, phantom_caches_small, tmp_path):
    with pytest.raises(ValueError, match=r"--check .* 32px .* --size 64"):
        export_onnx(exported[0], tmp_path / "m.onnx", check=phantom_caches_small["test"])


# the command -------------------------------------------------------------------------------
def test_cxr_export_command(tmp_path, capsys):
    model = small_model_file(tmp_path)
    assert cxr_main(["export", str(model), "--format", "onnx", "--opset", "17"]) == 0
    out = capsys.readouterr().out
    assert model.with_suffix(".onnx").is_file()
    assert "parity" in out and "batch 8" in out and "ok" in out
    assert cxr_main(["export", str(model), "--calibrate", str(tmp_path)]) == 2
    assert "--calibrate and --force go with --quantize int8" in capsys.readouterr().err
    assert cxr_main(["export", str(model), "--quantize", "int8"]) == 2
    assert "needs --calibrate" in capsys.readouterr().err
