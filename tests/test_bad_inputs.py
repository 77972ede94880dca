"""Every cxr command on a folder of bad inputs: an answer, never a traceback.

The folder holds zero-byte, truncated, text-as-PNG and 1x1 images, forged model files
(headers of the wrong shape, NaN weights, a pickle), label CSVs with duplicate rows and
with paths climbing out of the dataset folder, and caches and run folders that are not
what they claim. Each command must end with an exit code (0, 1 or 2) and, when it fails,
one ``cxr COMMAND: error: ...`` line; an exception escaping ``main`` is what a user would
see as a traceback.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.cli import main
from cxr.modelfile import save_model
from cxr.models import ModelSpec, Preprocessing, build_model


class NotATensor:
    pass


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _header_file(path: Path, header: object) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    images = root / "data" / "images"
    images.mkdir(parents=True)
    good = _png((np.add.outer(np.arange(96), np.arange(96)) % 256).astype(np.uint8))
    (images / "good.png").write_bytes(good)
    (images / "zero.png").write_bytes(b"")
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "text.png").write_text("this is not an image\n")
    (images / "tiny.png").write_bytes(_png(np.zeros((1, 1), np.uint8)))
    (images / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")

    data = root / "data"
    names = ["good", "zero", "truncated", "text", "tiny"]
    rows = [f"images/{n}.png,p{i},{i % 2},0" for i, n in enumerate(names)]
    (data / "labels.csv").write_text("image,patient,Effusion,Mass\n" + "\n".join(rows) + "\n")
    (data / "dup.csv").write_text(
        "image,patient,Effusion,Mass\nimages/good.png,p1,1,0\nimages/good.png,p1,0,0\n"
    )
    (data / "climb.csv").write_text(
        "image,patient,Effusion,Mass\nimages/good.png,p1,1,0\n../../../../etc/passwd,p2,0,0\n"
    )
    (data / "empty.csv").write_text("")
    (data / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))

    models = root / "models"
    models.mkdir()
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=("Effusion", "Mass"), backbone="cxr-small-cnn", preprocessing=Preprocessing(64)
    )
    model = build_model(spec).eval()
    save_model(models / "good.safetensors", model)
    with torch.no_grad():
        next(model.head.parameters()).fill_(float("nan"))
    save_model(models / "nan.safetensors", model)  # a valid checksum over NaN weights
    _header_file(models / "short_offsets.safetensors", {"w": {"dtype": "F32", "data_offsets": [0]}})
    _header_file(models / "metadata_list.safetensors", {"__metadata__": ["cxr"]})
    _header_file(models / "spec_list.safetensors", {"__metadata__": {"cxr": json.dumps([1])}})
    (models / "zero.safetensors").write_bytes(b"")
    (models / "text.safetensors").write_text("not a model")
    torch.save({"conv.weight": NotATensor()}, models / "pickle.pth")
    (models / "pickle.safetensors").write_bytes((models / "pickle.pth").read_bytes())

    caches = root / "caches"
    (caches / "empty").mkdir(parents=True)
    (caches / "fake").mkdir()
    (caches / "fake" / "manifest.json").write_text("{not json")
    (caches / "fake" / "pixels.npy").write_bytes(b"\x93NUMPY garbage")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: [unclosed\n")
    (run / "run.json").write_text("{}")
    (run / "state.pt").write_bytes(b"not a torch file")
    (root / "preds.csv").write_text("path,Effusion\nimages/good.png,not-a-number\n")
    return root


MODELS = [
    "good",
    "nan",
    "short_offsets",
    "metadata_list",
    "spec_list",
    "zero",
    "text",
    "pickle",
]

COMMANDS = [
    ["data", "inspect", "{d}/labels.csv"],
    ["data", "inspect", "{d}/dup.csv"],
    ["data", "inspect", "{d}/climb.csv"],
    ["data", "inspect", "{d}/empty.csv"],
    ["data", "inspect", "{d}/binary.csv"],
    ["data", "inspect", "{d}/images"],
    ["data", "inspect", "{d}/images/text.png"],
    ["data", "split", "{d}/dup.csv", "--out", "{tmp}/split"],
    ["data", "split", "{d}/climb.csv", "--out", "{tmp}/split"],
    ["data", "check-leakage", "{d}/labels.csv", "{d}/labels.csv"],
    ["data", "check-leakage", "{d}/labels.csv", "{d}/climb.csv"],
    ["prepare", "{d}/labels.csv", "--out", "{tmp}/cache", "--size", "64", "--workers", "1"],
    ["prepare", "{d}/climb.csv", "--out", "{tmp}/cache2", "--size", "64", "--workers", "1"],
    ["prepare", "{d}/dup.csv", "--out", "{tmp}/cache3", "--size", "64", "--workers", "1"],
    ["train", "{c}/empty", "{c}/fake", "--out", "{tmp}/run", "--no-progress"],
    ["train", "{d}/labels.csv", "{d}/labels.csv", "--out", "{tmp}/run", "--no-progress"],
    ["train", "--resume", "{r}", "--no-progress"],
    ["train", "--resume", "{d}/images/text.png"],
    ["evaluate", "--predictions", "{b}/preds.csv", "{d}/labels.csv"],
    ["evaluate", "--predictions", "{d}/images/text.png", "{d}/labels.csv"],
    ["compare", "{b}/preds.csv", "{d}/images/text.png", "{d}/labels.csv"],
    ["predict", "{m}/good.safetensors", "{d}/images", "--no-progress"],
    ["predict", "{m}/good.safetensors", "{d}/images/zero.png", "--no-progress"],
    ["predict", "{m}/good.safetensors", "{d}/images", "--explain", "{tmp}/ex", "--no-progress"],
    ["predict", "{m}/good.safetensors", "{d}/images", "--format", "json", "--no-progress"],
    ["localize", "{m}/good.safetensors", "{d}/images", "--no-progress"],
    ["sign", "{m}/text.safetensors"],
]
COMMANDS += [["predict", f"{{m}}/{name}.safetensors", "{d}/images"] for name in MODELS[1:]]
COMMANDS += [
    ["evaluate", "--model", f"{{m}}/{name}.safetensors", "{d}/labels.csv"] for name in MODELS[1:]
]
COMMANDS += [["train", "{c}/empty", "{c}/empty", "--pretrained", "{m}/pickle.pth"]]


@pytest.mark.parametrize("template", COMMANDS, ids=lambda t: "_".join(t[:3]).replace("{", ""))
def test_no_traceback_reaches_the_user(template, bad, tmp_path, capsys, monkeypatch):
    if template[0] == "sign":
        monkeypatch.setenv("CXR_SIGNING_KEY", "a-long-enough-test-signing-key")
    places = dict(
        d=bad / "data", m=bad / "models", c=bad / "caches", r=bad / "run", b=bad, tmp=tmp_path
    )
    argv = [part.format(**places) for part in template]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, captured.err)
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if ": error:" in line]
    if code == 2:
        assert errors, f"{argv} failed without an error line: {captured.err!r}"
    for line in errors:
        assert line.startswith(("cxr ", "usage:")), line
    if errors:  # the error is one line, and the last one
        assert captured.err.rstrip().splitlines()[-1] == errors[-1], captured.err
