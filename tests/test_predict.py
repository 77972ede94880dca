"""Predicting image files (cxr.inference) and the ``cxr predict`` command (cxr.cli.predict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr import RESEARCH_NOTICE
from cxr.cache import PreparedCache, prepare
from cxr.cli import main as cxr_main
from cxr.evaluation.predictions import read_predictions
from cxr.images import load_for_cache
from cxr.inference import (
    ImagePrediction,
    PredictionResult,
    Predictor,
    list_images,
    tta_views,
)
from cxr.modelfile import load_model, save_model
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.table import LabelTable
from dicom_files import write_dicom

LABELS = ("Cardiomegaly", "Effusion", "Mass")
THRESHOLDS = {"Cardiomegaly": 0.42, "Mass": 0.6}  # none stored for Effusion


# helpers -----------------------------------------------------------------------------------
def base_image(h: int = 80, w: int = 100, seed: int = 0) -> np.ndarray:
    """uint8 (h, w) using the full range 0..255 (so DICOM min-max scaling keeps it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 128 + 90 * np.sin(xx / 9.0 + seed) * np.cos(yy / 7.0) + rng.normal(0, 8, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def headlines(text: str) -> int:
    """How many image headlines (cxr.thresholds.headline) a text report holds."""
    starts = r"^  (At or above threshold: |No finding at or above|No thresholds)"
    return len(re.findall(starts, text, re.M))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random small CNN whose head is set by hand so that its probabilities depend on the
    image: logits [0.5, 0, -0.5] for ``base_image()`` and [2.5, -1, 0.5] for the other one."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=64))
    ).eval()
    pix = [load_array(base_image()), load_array(base_image(96, 70, seed=3))]
    with torch.no_grad():
        fa, fb = (
            model.head.pool(model.features(torch.from_numpy(p)[None, None] / 255.0))[0] for p in pix
        )
        d = (fb - fa) / (fb - fa).pow(2).sum()
        model.head.out.weight.copy_(torch.tensor([2.0, -1.0, 1.0])[:, None] * d[None])
        model.head.out.bias.copy_(torch.tensor([0.5, 0.0, -0.5]) - model.head.out.weight @ fa)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_model(path, model, thresholds=THRESHOLDS, training={"epoch": 1})


def load_array(array: np.ndarray, size: int = 64) -> np.ndarray:
    """The uint8 (size, size) pixels load_for_cache gives for a PNG of ``array``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_for_cache(write_png(Path(tmp) / "x.png", array), size)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    base = base_image()
    out = {
        "png": write_png(root / "a.png", base),
        "other": write_png(root / "sub" / "b.png", base_image(96, 70, seed=3)),
        "mono2": write_dicom(root / "c.dcm", base.astype(np.uint16) * 257, "MONOCHROME2"),
        "mono1": write_dicom(
            root / "sub" / "d.dcm", 65535 - base.astype(np.uint16) * 257, "MONOCHROME1"
        ),
    }
    (root / "labels.csv").write_text("Image,Effusion\na.png,1\n")
    (root / ".hidden.png").write_bytes(b"not an image")
    return out


def cli(argv: list[str]) -> int:
    """``cxr ARGV`` as a user runs it: errors become one line on stderr and exit code 2."""
    return cxr_main(argv)


# finding images ---------------------------------------------------------------------------
def test_list_images_expands_folders_in_order(images, tmp_path):
    root = images["png"].parent
    bare = tmp_path / "dicom_without_suffix"
    bare.write_bytes(images["mono2"].read_bytes())
    ignored: list[Path] = []
    found = list_images([images["other"], root, bare, root / "missing.png"], ignored)
    assert found == [
        images["other"],
        images["png"],
        images["mono2"],
        images["mono1"],
        bare,
        root / "missing.png",
    ]  # given order, folder sorted, repeats once
    assert ignored == [root / "labels.csv"]
    assert list_images(tmp_path) == [bare]  # DICOM found by its DICM signature


# predicting -------------------------------------------------------------------------------
def test_png_matches_the_cache_row_of_the_same_image(model_file, images, tmp_path):
    paths = [str(images["png"]), str(images["other"])]
    table = LabelTable.from_columns(paths, ["p1", "p2"], np.zeros((2, 1), np.float32), ["Mass"])
    prepare(table, tmp_path / "cache", 64, workers=1, progress=False)
    cache = PreparedCache(tmp_path / "cache")
    predictor = Predictor(model_file)
    assert predictor.fit == "pad" and predictor.size == 64
    result = predictor.predict_images(paths)
    assert result.all_succeeded and result.paths == paths
    from_cache = predictor.predict_arrays(cache.read([0, 1]))
    assert from_cache.shape == (2, 3) and from_cache.dtype == np.float32
    np.testing.assert_allclose(result.probs, from_cache, atol=1e-6)
    assert np.abs(result.probs[0] - result.probs[1]).max() > 0.01  # the model sees the image
    assert ((result.probs > 0.02) & (result.probs < 0.98)).all()
    # and the same as calling the model by hand on pixels / 255
    x = torch.from_numpy(cache.read([0]))[:, None].float() / 255.0
    with torch.no_grad():
        by_hand = torch.sigmoid(load_model(model_file).model(x)).numpy()
    np.testing.assert_allclose(result.probs[:1], by_hand, atol=1e-6)
    # the whole cache, read ahead in batches smaller than it: the same rows
    np.testing.assert_allclose(
        Predictor(model_file, batch_size=1).predict_cache(cache), from_cache, atol=1e-6
    )


def test_precision_and_memory_format_options(model_file, images):
    pixels = Predictor(model_file).preprocess(images["png"])[None]
    reference = Predictor(model_file, channels_last=False, precision="fp32").predict_arrays(pixels)
    auto = Predictor(model_file)  # CPU: fp32, channels-last
    assert auto.precision == "fp32" and auto.channels_last
    np.testing.assert_allclose(auto.predict_arrays(pixels), reference, atol=1e-5)
    bf16 = Predictor(model_file, precision="bf16").predict_arrays(pixels)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, reference, atol=0.05)  # bf16 keeps ~3 significant digits
    assert not np.array_equal(bf16, reference)  # it did run in bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(model_file, precision="int8")


def test_dicom_monochrome1_and_2_match_the_png(model_file, images):
    predictor = Predictor(model_file)
    png = predictor.preprocess(images["png"])
    for key in ("mono2", "mono1"):
        pixels = predictor.preprocess(images[key])
        assert int(np.abs(pixels.astype(int) - png.astype(int)).max()) <= 1
        # not inverted (the padding is black either way; compare the image area)
        assert int(np.abs(pixels[10:54].astype(int) - (255 - png[10:54].astype(int))).max()) > 100
    result = predictor.predict_images([images["png"], images["mono2"], images["mono1"]])
    assert result.all_succeeded
    np.testing.assert_allclose(result.probs[1], result.probs[0], atol=0.01)
    np.testing.assert_allclose(result.probs[2], result.probs[0], atol=0.01)


def test_unreadable_files_are_reported_by_name_and_skipped(model_file, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = Predictor(model_file, batch_size=2).predict_images(
        [images["png"], corrupt, text, images["mono1"], tmp_path / "gone.png"]
    )
    assert [it.path for it in result.items] == [
        str(images["png"]),
        str(corrupt),
        str(text),
        str(images["mono1"]),
        str(tmp_path / "gone.png"),
    ]
    assert [it.ok for it in result.items] == [True, False, False, True, False]
    reasons = {Path(it.path).name: it.reason for it in result.skipped}
    assert reasons == {
        "corrupt.png": "truncated",
        "notes.txt": "unsupported",
        "gone.png": "missing",
    }
    assert not result.all_succeeded and result.probs.shape == (2, 3)
    out = result.to_text()
    assert f"{corrupt}: truncated" in out and f"{text}: unsupported" in out
    # the command: every skipped file on stderr, exit code 1
    code = cli(
        [
            "predict",
            str(model_file),
            str(images["png"]),
            str(corrupt),
            str(text),
            "--no-progress",
            "--format",
            "json",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 1
    data = json.loads((tmp_path / "p.json").read_text())
    assert [s["path"] for s in data["skipped"]] == [str(corrupt), str(text)]
    assert data["n_predicted"] == 1 and data["notice"] == RESEARCH_NOTICE


def test_tta_is_the_mean_over_the_documented_views(model_file, images):
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64) / 4096
    views = tta_views(x)
    d = round(0.03 * 64)
    assert len(views) == 6 and d == 2
    assert torch.equal(views[1], x.flip(-1))
    assert torch.equal(views[2][..., :, d:], x[..., :, :-d]) and not views[2][..., :, :d].any()
    assert torch.equal(views[3][..., :, :-d], x[..., :, d:]) and not views[3][..., :, -d:].any()
    assert torch.equal(views[4][..., d:, :], x[..., :-d, :]) and not views[4][..., :d, :].any()
    assert torch.equal(views[5][..., :-d, :], x[..., d:, :]) and not views[5][..., -d:, :].any()
    plain, tta = Predictor(model_file), Predictor(model_file, tta=True)
    pixels = plain.preprocess(images["png"])[None]
    xin = torch.from_numpy(pixels)[:, None].float() / 255.0
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(plain.model(v)) for v in tta_views(xin)]).mean(0)
    got = tta.predict_arrays(pixels)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    assert np.abs(got - plain.predict_arrays(pixels)).max() > 1e-5
    assert "shifts of 2 px" in tta.describe()["tta_views"]


def test_preprocessing_follows_the_model_file(images, tmp_path):
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(
            labels=LABELS,
            backbone="cxr-small-cnn",
            preprocessing=Preprocessing(size=48, fit="crop"),
        )
    )
    path = save_model(tmp_path / "crop.safetensors", model)
    predictor = Predictor(path)
    assert (predictor.fit, predictor.size) == ("crop", 48)
    assert np.array_equal(
        predictor.preprocess(images["other"]), load_for_cache(images["other"], 48, "crop")
    )
    with pytest.raises(ValueError, match=r"uint8 \(B, 48, 48\).*--fit crop"):
        predictor.predict_arrays(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="fit must be one of"):
        Preprocessing(size=48, fit="stretch")


# rendering --------------------------------------------------------------------------------
def made_up_result() -> PredictionResult:
    items = [
        ImagePrediction("x.png", np.array([0.3, 0.91, 0.75], np.float32)),
        ImagePrediction("y.png", np.array([0.5, 0.1, 0.2], np.float32)),
        ImagePrediction("z.txt", None, "unsupported", "not a PNG or JPEG image"),
    ]
    return PredictionResult(LABELS, {"Effusion": 0.42, "Mass": 0.8}, items)


def test_text_has_headline_ranked_table_marks_and_notice():
    text = made_up_result().to_text()
    assert text.startswith(RESEARCH_NOTICE)
    assert "  At or above threshold: Effusion 0.910\n" in text  # Mass 0.75 < 0.8: not named
    assert "  No finding at or above its threshold (highest: Cardiomegaly 0.500)" in text
    block = text.split("x.png")[1].split("y.png")[0]
    rows = [ln.split() for ln in block.splitlines() if ln.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == ["Effusion", "Mass", "Cardiomegaly"]  # ranked
    assert rows[0][-1] == "*" and rows[1][-1] == "0.800"  # 0.75 < 0.8: not marked
    assert rows[2][-2:] == ["none", "-"]
    assert "no threshold stored (Cardiomegaly)" in text
    assert "z.txt: unsupported: not a PNG or JPEG image" in text
    assert text.rstrip().endswith(RESEARCH_NOTICE)
    # the headline names the findings at or above their thresholds, never one below
    assert (
        made_up_result().headline(np.array([0.1, 0.3, 0.5]))
        == "No finding at or above its threshold (highest: Mass 0.500, threshold 0.800)"
    )
    assert (
        made_up_result().headline(np.array([0.9, 0.5, 0.8]))
        == "At or above threshold: Effusion 0.500, Mass 0.800"
    )
    assert (
        made_up_result().headline(np.array([0.1, 0.3, 0.7999]))
        == "No finding at or above its threshold (highest: Mass 0.7999, threshold 0.8000)"
    )


def test_json_and_csv(tmp_path):
    result = made_up_result()
    data = json.loads(result.to_json())
    first = data["images"][0]
    assert first["above_threshold"] == ["Effusion"]
    assert first["top_finding"] == {
        "label": "Effusion",
        "probability": pytest.approx(0.91),
        "threshold": 0.42,
        "above_threshold": True,
    }
    assert data["skipped"][0]["reason"] == "unsupported" and data["notice"] == RESEARCH_NOTICE
    path = tmp_path / "p.csv"
    path.write_text(result.to_csv())
    lines = path.read_text().splitlines()
    assert lines[0] == (
        "Image Index,prob_Cardiomegaly,prob_Effusion,prob_Mass,above_Cardiomegaly,"
        "above_Effusion,above_Mass,ood_score,out_of_distribution,notice"
    )
    assert lines[1].split(",")[4:7] == ["", "1", "0"] and RESEARCH_NOTICE in lines[1]
    back = read_predictions(path)  # readable by cxr evaluate
    assert back.pathologies == LABELS and list(back.images) == ["x.png", "y.png"]
    np.testing.assert_allclose(back.probs, result.probs, atol=1e-7)


# the command ------------------------------------------------------------------------------
def test_cli_predict_text_csv_and_explain(model_file, images, tmp_path, capsys):
    folder = images["png"].parent
    code = cli(["predict", str(model_file), str(folder), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0
    assert headlines(out.out) == 4 and RESEARCH_NOTICE in out.out
    assert "non-image file(s)" in out.out  # labels.csv was ignored, said so
    assert (
        cli(
            [
                "predict",
                str(model_file),
                str(images["png"]),
                "--format",
                "csv",
                "--tta",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.startswith("Image Index,prob_Cardiomegaly") and RESEARCH_NOTICE in out.err
    code = cli(
        [
            "predict",
            str(model_file),
            str(images["png"]),
            str(images["mono1"]),
            "--explain",
            str(tmp_path / "cams"),
            "--top-k",
            "2",
            "--method",
            "gradcam++",
            "--no-progress",
        ]
    )
    assert code == 0
    pngs = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert pngs == ["a_Cardiomegaly.png", "a_Effusion.png", "d_Cardiomegaly.png", "d_Effusion.png"]
    capsys.readouterr()
    assert (
        cli(
            [
                "predict",
                str(model_file),
                str(images["png"]),
                "--explain",
                str(tmp_path / "named"),
                "--explain-labels",
                "Mass",
                "--no-progress",
            ]
        )
        == 0
    )
    assert [p.name for p in (tmp_path / "named").iterdir()] == ["a_Mass.png"]


def test_cli_predict_bad_usage_exit_2(model_file, images, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nonsense")
    assert cli(["predict", str(broken), str(images["png"]), "--no-progress"]) == 2
    assert "broken.safetensors" in capsys.readouterr().err
    assert (
        cli(
            [
                "predict",
                str(model_file),
                str(images["png"]),
                "--explain",
                str(tmp_path / "e"),
                "--explain-labels",
                "Nodule",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "Nodule" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(model_file), str(tmp_path / "empty"), "--no-progress"]) == 2
    with pytest.raises(SystemExit) as info:
        cli(["predict", str(model_file), str(images["png"]), "--format", "xml"])
    assert info.value.code == 2


def test_wired_into_cxr_main(model_file, images, capsys):
    from cxr import cli

    assert cli.main(["predict", str(model_file), str(images["png"]), "--no-progress"]) == 0
    assert headlines(capsys.readouterr().out) == 1
