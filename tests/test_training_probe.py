"""The probe recipe (cxr.training.probe, ``cxr train --recipe probe``): an ordinary model
file with the probe in its head, thresholds, calibration and gate; ONNX parity; members;
callbacks; refusals."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from cxr.cache import PreparedCache
from cxr.cli import main
from cxr.evaluation.metrics import roc_auc
from cxr.inference.backends import TorchBackend
from cxr.modelfile import load_model
from cxr.models import HeadConfig, ModelSpec, build_model
from cxr.training import TrainConfig, TrainError, train
from cxr.training.probe import cv_folds
from cxr.training.probe_features import pooled_features


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A backbone weights file for cxr-small-cnn (random: it has no pretrained weights)."""
    torch.manual_seed(1)
    model = build_model(ModelSpec(labels=("a",), backbone="cxr-small-cnn"))
    path = tmp_path_factory.mktemp("weights") / "small.pt"
    torch.save(model.backbone.state_dict(), path)
    return path


def _args(caches, weights, out, *extra):
    return [
        "train", str(caches["train"]), str(caches["val"]), "--recipe", "probe",
        "--backbone", "cxr-small-cnn", "--pretrained", str(weights), "--out", str(out),
        "--device", "cpu", "--no-progress", "--no-mlflow", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def probe_run(phantom_caches_300, weights, tmp_path_factory):
    """``cxr train --recipe probe`` on 64 px phantoms: the run folder."""
    out = tmp_path_factory.mktemp("probe") / "run"
    assert main(_args(phantom_caches_300, weights, out)) == 0
    return out


def test_the_cli_writes_a_model_with_thresholds_calibration_and_gate(probe_run):
    loaded = load_model(probe_run / "best.safetensors")
    labels = loaded.spec.labels
    assert loaded.spec.head == HeadConfig(pool="avg", dropout=0.0, hidden=())
    assert loaded.thresholds and set(loaded.thresholds) <= set(labels)
    assert loaded.calibration is not None and "out-of-fold" in loaded.calibration.source
    assert loaded.ood is not None
    probe = loaded.training["probe"]
    assert loaded.training["recipe"] == "probe" and set(probe["C"]) == set(labels)
    assert probe["folds"] == 5 and probe["members"] == 1
    last = load_model(probe_run / "last.safetensors").model.state_dict()
    assert all(torch.equal(v, last[k]) for k, v in loaded.model.state_dict().items())
    rows = list(csv.DictReader((probe_run / "history.csv").open()))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["cv_macro_auc"]) <= 1.0
    assert {f"cv_auc_{n}" for n in labels} <= set(rows[0])
    assert TrainConfig.load(probe_run / "config.yaml").recipe == "probe"
    assert not (probe_run / "state.pt").exists()


def test_the_head_holds_the_probe_that_was_scored(probe_run, phantom_caches_300):
    """The model's own validation probabilities give the AUCs the run reported, and the
    probe learned the phantoms' strongest finding from random-weight features."""
    loaded = load_model(probe_run / "best.safetensors")
    val = PreparedCache(phantom_caches_300["val"])
    backend = TorchBackend(loaded, precision="fp32", channels_last=False)
    probs = backend.to_numpy([backend.probabilities(val.read(np.arange(len(val))))])
    row = next(csv.DictReader((probe_run / "history.csv").open()))
    y = val.table.labels[:, [val.table.pathologies.index(n) for n in loaded.spec.labels]]
    for j, name in enumerate(loaded.spec.labels):
        known = ~np.isnan(y[:, j])
        if 0 < y[known, j].sum() < known.sum():
            assert roc_auc(y[known, j], probs[known, j]) == pytest.approx(
                float(row[f"val_auc_{name}"]), abs=1e-9
            )
    assert float(row["cv_auc_Cardiomegaly"]) > 0.8


def test_torch_and_onnx_predict_the_same(probe_run, phantom_caches_300, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cxr.export import export_onnx
    from cxr.inference.onnx_backend import OnnxBackend

    model = probe_run / "best.safetensors"
    report = export_onnx(model, tmp_path / "probe.onnx", check=phantom_caches_300["test"])
    assert max(report.parity.values()) <= 1e-4
    onnx = OnnxBackend(tmp_path / "probe.onnx")
    assert onnx.thresholds == load_model(model).thresholds and onnx.ood is not None
    test = PreparedCache(phantom_caches_300["test"])
    pixels = test.read(np.arange(len(test)))
    torch_probs = TorchBackend(load_model(model), precision="fp32").probabilities(pixels)
    diff = np.abs(onnx.probabilities(pixels) - torch_probs.numpy())
    assert diff.max() < 1e-5


def test_the_api_reports_to_callbacks(phantom_caches_small, weights, tmp_path):
    events: list[tuple[str, object]] = []
    config = TrainConfig(
        recipe="probe", backbone="cxr-small-cnn", pretrained=str(weights), device="cpu"
    )
    lines: list[str] = []
    result = train(
        config, phantom_caches_small["train"], phantom_caches_small["val"], tmp_path / "run",
        progress=False, echo=lines.append, callbacks=[lambda e, info: events.append((e, info))],
    )  # fmt: skip
    assert [e for e, _ in events] == ["start", "epoch", "end"]
    assert events[1][1] is result.history[0] and events[2][1] is result
    assert result.epochs_run == 1 and result.best_auc == result.history[0]["val_macro_auc"]
    assert lines[0].startswith("recipe probe:") and "x 2 views" in lines[0]
    assert "5-fold patient CV" in lines[0]
    assert any(line.startswith("C per label:") for line in lines)
    with pytest.raises(TrainError, match="already holds a run"):
        train(config, phantom_caches_small["train"], phantom_caches_small["val"],
              tmp_path / "run", progress=False, echo=lines.append)  # fmt: skip


def test_k_members_average_their_probabilities(phantom_caches_small, weights, tmp_path):
    if "members" not in {f.name for f in dataclasses.fields(HeadConfig)}:
        pytest.skip("the model head has no ensemble members yet (HeadConfig.members)")
    config = TrainConfig(
        recipe="probe", backbone="cxr-small-cnn", pretrained=str(weights), device="cpu", folds=3
    )
    c = phantom_caches_small
    train(config, c["train"], c["val"], tmp_path / "run", progress=False, echo=lambda s: None)
    loaded = load_model(tmp_path / "run" / "best.safetensors")
    n_labels = len(loaded.spec.labels)
    assert loaded.training["probe"]["members"] == 3
    out = loaded.model.head.out
    assert tuple(out.weight.shape) == (3 * n_labels, loaded.model.num_features)
    val = PreparedCache(c["val"])
    pooled = pooled_features(loaded.model, val, views=("original",))[0].astype(np.float64)
    logits = pooled @ out.weight.detach().double().numpy().T + out.bias.detach().double().numpy()
    members = 1 / (1 + np.exp(-logits.reshape(len(val), 3, n_labels)))
    backend = TorchBackend(loaded, precision="fp32", channels_last=False)
    probs = backend.probabilities(val.read(np.arange(len(val)))).numpy()
    assert np.abs(probs - members.mean(axis=1)).max() < 1e-5
    assert np.abs(probs - members[:, 0]).max() > 1e-4  # the members differ
    try:
        from cxr.export import export_onnx
        from cxr.inference.onnx_backend import OnnxBackend

        export_onnx(loaded, tmp_path / "members.onnx")
    except ImportError:  # the onnx extra is not installed
        return
    onnx = OnnxBackend(tmp_path / "members.onnx").probabilities(val.read(np.arange(len(val))))
    assert np.abs(onnx - probs).max() < 1e-5


@pytest.mark.parametrize(
    ("extra", "drop_pretrained", "message"),
    [
        ((), True, "pretrained=None: the probe recipe .* useless features"),
        (("--hidden", "16"), False, "hidden=.*one linear layer"),
        (("--pool", "gem"), False, "pool='gem'.*average pooling"),
    ],
)
def test_what_the_probe_cannot_use_is_refused(
    phantom_caches_small, weights, tmp_path, capsys, extra, drop_pretrained, message
):
    args = _args(phantom_caches_small, weights, tmp_path / "run", *extra)
    if drop_pretrained:
        at = args.index("--pretrained")
        del args[at : at + 2]
    assert main(args) == 2
    assert capsys.readouterr().err and not (tmp_path / "run").exists()
    with pytest.raises(Exception, match=message):
        TrainConfig.from_dict(
            {"recipe": "probe", "pretrained": None if drop_pretrained else "w.pt"}
            | ({"hidden": [16]} if "--hidden" in extra else {})
            | ({"pool": "gem"} if "--pool" in extra else {})
        )


def test_folds_with_fine_tuning_are_refused(phantom_caches_small, weights, tmp_path, capsys):
    args = _args(phantom_caches_small, weights, tmp_path / "run", "--folds", "3")
    args[args.index("probe")] = "finetune"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "folds=3" in err and "fine-tuned backbones" in err and "--recipe probe" in err


def test_cv_folds_follow_the_patients(phantom_caches_small):
    table = PreparedCache(phantom_caches_small["train"]).table
    config = TrainConfig(recipe="probe", pretrained="w.pt")
    assert len(np.unique(cv_folds(config, table))) == 5
    few = table.subset(np.arange(6))
    patients = len(set(few.meta["patient_id"]))
    assert 2 <= patients < 5
    assert len(np.unique(cv_folds(config, few))) == patients
    with pytest.raises(TrainError, match="folds"):
        cv_folds(config.replace(folds=patients + 1), few)


def test_resume_and_summary_speak_of_a_probe(probe_run, capsys):
    from cxr.training import resume
    from cxr.training.config import TrainError

    with pytest.raises(TrainError, match="probe run.*--overwrite"):
        resume(probe_run)
    assert main(["train", "--resume", str(probe_run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_the_command_summary_reports_the_cross_validated_auc(
    phantom_caches_300, weights, tmp_path, capsys
):
    assert main(_args(phantom_caches_300, weights, tmp_path / "r")) == 0
    out = capsys.readouterr().out
    assert "probe: cross-validated macro AUC on the training set" in out
    assert "epochs run" not in out and "throughput" not in out
