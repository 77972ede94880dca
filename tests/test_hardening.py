"""Bad and forged inputs get one clear answer naming the file or field, never a traceback."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cxr.cli import main
from cxr.inference import Predictor
from cxr.inference.backends import Backend
from cxr.modelfile import ModelFileError, load_model, read_model_info, save_model
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.models.pretrained import PretrainedWeightsError, read_state_dict
from cxr.training import TrainConfig, TrainError, resume

LABELS = ("Effusion", "Mass")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=32))
    )
    return save_model(tmp_path_factory.mktemp("m") / "m.safetensors", model)


def write_header(path, header: dict, body: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + body)


@pytest.mark.parametrize(
    "header, field",
    [
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, "data_offsets"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, "data_offsets"),
        ({"w": {"dtype": "F32", "shape": [1]}}, "data_offsets"),
        ({"__metadata__": ["cxr"]}, "__metadata__"),
        ({"__metadata__": {"cxr": 5}}, "__metadata__.cxr"),
    ],
)
def test_headers_of_the_wrong_shape_are_refused_naming_the_field(tmp_path, header, field):
    path = tmp_path / "forged.safetensors"
    write_header(path, header, b"\0" * 8)
    with pytest.raises(ModelFileError, match=field) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_a_spec_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "forged.safetensors"
    meta = {"format": "cxr-model", "format_version": 2, "spec": [1, 2], "training": ["x"]}
    write_header(path, {"__metadata__": {"cxr": json.dumps(meta)}})
    with pytest.raises(ModelFileError, match="training summary is not a JSON object"):
        read_model_info(path)
    meta["training"] = {}
    write_header(path, {"__metadata__": {"cxr": json.dumps(meta)}})
    with pytest.raises(ModelFileError, match="spec must be a JSON object, got list"):
        read_model_info(path)


def test_non_finite_weights_are_refused(tmp_path, model_file):
    loaded = load_model(model_file)
    with torch.no_grad():
        next(loaded.model.head.parameters()).fill_(float("nan"))
    path = save_model(tmp_path / "nan.safetensors", loaded.model)  # a valid hash over NaN
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(path)


class NaNBackend(Backend):
    """A backend whose network computes NaN (as a forged file could)."""

    name = "nan"

    def __init__(self, model_file):
        loaded = load_model(model_file)
        self.spec, self.thresholds = loaded.spec, {}
        self.training, self.path = {}, model_file

    def probabilities(self, pixels):
        return np.full((len(pixels), len(self.spec.labels)), np.nan, np.float32)

    def to_numpy(self, outputs):
        return np.concatenate(list(outputs)).astype(np.float32)


def test_non_finite_probabilities_are_an_error_naming_the_model(model_file):
    predictor = Predictor(NaNBackend(model_file))
    with pytest.raises(ValueError, match=r"m\.safetensors computed NaN"):
        predictor.predict_arrays(np.zeros((2, 32, 32), np.uint8))


class NotATensor:
    pass


def test_pickles_are_refused_in_one_line(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": NotATensor()}, weights)
    with pytest.raises(PretrainedWeightsError) as err:
        read_state_dict(weights)
    message = str(err.value)
    assert "never unpickles" in message and "weights_only" not in message
    assert "\n" not in message and str(weights) in message

    run = tmp_path / "run"
    run.mkdir()
    TrainConfig().save(run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"train_cache": "x", "val_cache": "y"}))
    torch.save({"version": NotATensor()}, run / "state.pt")
    with pytest.raises(TrainError, match="state.pt holds pickled objects") as err:
        resume(run, progress=False)
    assert "weights_only" not in str(err.value)


def test_warnings_print_as_one_cxr_line(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("Image,Effusion\na.png,1\nb.png,0\n")  # no patient column: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["data", "inspect", str(csv), "--no-check-files"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert lines and all(ln.startswith("cxr data: warning: ") for ln in lines), err
    assert "Warning:" not in err and ".py:" not in err  # not Python's warnings format


class ClosedPipe:
    """stdout whose reader has left (`cxr ... | head`): every write raises EPIPE."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_broken_pipe_ends_quietly(tmp_path, model_file, monkeypatch, capsys):
    from PIL import Image

    image = tmp_path / "scan.png"
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(image)
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["predict", str(model_file), str(image), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "error" not in err and "broken pipe" not in err.lower(), err


def test_predict_lists_links_to_nothing_loops_and_fifos_as_skipped(tmp_path, model_file):
    import os

    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(folder / "good.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    os.mkfifo(folder / "pipe.png")
    result = Predictor(model_file).predict_images([folder])
    skipped = {os.path.basename(it.path): (it.reason, it.detail) for it in result.skipped}
    assert [os.path.basename(p) for p in result.paths] == ["good.png"]
    assert skipped["dangling.png"] == ("missing", "a symbolic link to a missing file")
    assert skipped["loop.png"][0] == "unreadable" and "symbolic links" in skipped["loop.png"][1]
    assert skipped["pipe.png"] == ("unreadable", "not a regular file (a FIFO)")
    assert not result.all_succeeded


def test_explain_with_the_default_top_k_on_a_two_label_model(tmp_path, model_file, capsys):
    from PIL import Image

    image = tmp_path / "scan.png"
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(image)
    code = main(
        [
            "predict",
            str(model_file),
            str(image),
            "--explain",
            str(tmp_path / "cams"),
            "--no-progress",
        ]
    )  # default --top-k 3, the model has 2 labels
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == [
        "scan_Effusion.png",
        "scan_Mass.png",
    ]
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(image),
                "--explain",
                str(tmp_path / "c2"),
                "--top-k",
                "0",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--top-k must be 1 or more" in capsys.readouterr().err
