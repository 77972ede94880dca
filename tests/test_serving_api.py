"""``cxr serve``'s REST API (cxr.serving): every endpoint and every error code, in process.

The helpers at the top (a small model file, PNG/DICOM bytes, a server on loopback) are
shared with the other ``test_serving_*`` modules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import re
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")

with warnings.catch_warnings():  # Starlette's note that it prefers httpx2 to httpx
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient  # noqa: E402

from cxr import RESEARCH_NOTICE  # noqa: E402
from cxr.cli import main as cxr_main  # noqa: E402
from cxr.explain import explain  # noqa: E402
from cxr.images import load_for_cache  # noqa: E402
from cxr.inference import Backend, Predictor  # noqa: E402
from cxr.modelfile import save_model  # noqa: E402
from cxr.models import ModelSpec, Preprocessing, build_model  # noqa: E402
from cxr.serving import ServeSettings, create_app  # noqa: E402
from cxr.serving.batching import MicroBatcher, QueueFull  # noqa: E402
from cxr.serving.uploads import display_name  # noqa: E402
from dicom_files import write_dicom  # noqa: E402

LABELS = ("Cardiomegaly", "Effusion", "Mass")
THRESHOLDS = {"Cardiomegaly": 0.42, "Mass": 0.6}  # none stored for Effusion


# helpers shared with the other test_serving_* modules ---------------------------------------
def write_model(path: Path, labels=LABELS, thresholds=THRESHOLDS, size: int = 64) -> Path:
    """A random small CNN whose probabilities depend on the image (seeded)."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=labels, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=size))
    ).eval()
    with torch.no_grad():  # spread the logits so the ranking differs between images
        model.head.out.weight.mul_(40.0)
    training = {"epoch": 3, "val_macro_auc": float("nan"), "recipe": "test"}
    return save_model(path, model, thresholds=thresholds, training=training)


def gray_image(h: int = 100, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 128 + 90 * np.sin(xx / (6.0 + seed) + seed) * np.cos(yy / 7.0) + rng.normal(0, 8, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def dicom_bytes(tmp_path: Path, array: np.ndarray, photometric="MONOCHROME2", **attrs) -> bytes:
    values = array.astype(np.uint16) * 257
    if photometric == "MONOCHROME1":
        values = 65535 - values
    path = write_dicom(
        tmp_path / f"d{len(list(tmp_path.iterdir()))}.dcm", values, photometric, **attrs
    )
    return path.read_bytes()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


class LiveServer:
    """The app on uvicorn in a thread, on 127.0.0.1 and an ephemeral port."""

    def __init__(self, app) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


# fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("serve_model") / "model.safetensors")


@pytest.fixture(scope="module")
def client(model_file) -> Iterator[TestClient]:
    app = create_app(model_file, settings=ServeSettings(max_wait_ms=2))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("serve_images")
    a, b = gray_image(), gray_image(90, 110, seed=3)
    return {
        "png": png_bytes(a),
        "other": png_bytes(b),
        "jpeg": jpeg_bytes(b),
        "dicom": dicom_bytes(tmp, a),
        "mono1": dicom_bytes(tmp, a, "MONOCHROME1"),
    }


def files(*items: tuple[str, bytes], field: str = "files", ctype: str = "application/octet-stream"):
    return [(field, (name, data, ctype)) for name, data in items]


# probes, model ----------------------------------------------------------------------------
def test_probes_and_model_info(client, model_file):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["labels"] == list(LABELS)
    assert info["backbone"] == "cxr-small-cnn"
    assert info["input_size"] == 64 and info["fit"] == "pad"
    assert info["thresholds"] == THRESHOLDS
    assert info["training"]["epoch"] == 3 and info["training"]["val_macro_auc"] is None  # NaN
    assert info["file"]["name"] == "model.safetensors"
    assert info["file"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert info["file"]["bytes"] == model_file.stat().st_size
    assert info["versions"]["cxr"] and info["versions"]["torch"]
    assert info["notice"] == RESEARCH_NOTICE
    assert info["backend"]["backend"] == "torch"
    assert info["explanations"]["available"] is True
    assert info["ood"] == {"available": False, "threshold": None}
    assert str(model_file.parent) not in json.dumps(info)  # no server paths


def test_the_not_a_chest_x_ray_gate_is_reported_per_image(model_file, images, tmp_path):
    """A model file with the gate: every image gets its score and flag, as cxr predict."""
    from cxr.inference import Predictor
    from cxr.modelfile import with_ood
    from cxr.ood import fit_ood_gate

    rng = np.random.default_rng(0)
    pixels = rng.integers(90, 110, (40, 64, 64), dtype=np.uint8)  # a narrow, flat "domain"
    _, pooled = Predictor(model_file).backend.features(pixels)
    gated = with_ood(model_file, fit_ood_gate(pooled[:30], pooled[30:]), tmp_path / "g.safetensors")
    noise = png_bytes(rng.integers(0, 256, (96, 96), dtype=np.uint8))
    with TestClient(create_app(gated)) as c:
        assert c.get("/v1/model").json()["ood"]["available"] is True
        body = c.post("/v1/predict", files=files(("noise.png", noise))).json()
    ood = body["images"][0]["ood"]
    assert ood["available"] is True and ood["flag"] is True and ood["score"] > 0


def test_not_ready_outside_the_lifespan(model_file):
    app = create_app(model_file)
    c = TestClient(app)  # no `with`: the lifespan (batcher, warm-up) never ran
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "starting"
    png = png_bytes(gray_image())
    assert c.post("/v1/predict", files=files(("a.png", png))).status_code == 503


# predict ----------------------------------------------------------------------------------
def test_predict_matches_cxr_predict_json(client, model_file, images, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(images["png"])
    (tmp_path / "c.dcm").write_bytes(images["dicom"])
    (tmp_path / "b.jpg").write_bytes(images["jpeg"])
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    names = ["a.png", "c.dcm", "b.jpg", "x.png"]
    code = cxr_main(
        ["predict", str(model_file), *(str(tmp_path / n) for n in names), "--format", "json"]
        + ["--out", str(tmp_path / "cli.json"), "--no-progress"]
    )
    assert code == 1  # one file skipped
    capsys.readouterr()
    cli = json.loads((tmp_path / "cli.json").read_text())
    r = client.post("/v1/predict", files=files(*((n, (tmp_path / n).read_bytes()) for n in names)))
    assert r.status_code == 200
    api = r.json()
    for key in ("notice", "labels", "thresholds", "n_predicted", "n_skipped", "notes"):
        assert api[key] == cli[key], key
    assert {k: v for k, v in api["model"].items() if k != "path"} == {
        k: v for k, v in cli["model"].items() if k != "path"
    }
    assert api["model"]["path"] == model_file.name
    assert len(api["images"]) == 3
    for a, c in zip(api["images"], cli["images"], strict=True):
        assert a["path"] == Path(c["path"]).name
        assert a["probabilities"] == pytest.approx(c["probabilities"], abs=1e-6)
        assert a["above_threshold"] == c["above_threshold"]
        assert a["top_finding"]["label"] == c["top_finding"]["label"]
        assert a["top_finding"]["probability"] == pytest.approx(c["top_finding"]["probability"])
        assert a["top_finding"]["threshold"] == c["top_finding"]["threshold"]
    assert (
        api["skipped"] == [{**cli["skipped"][0], "path": "x.png"}]
        and cli["skipped"][0]["reason"] == "unsupported"
    )


def test_predict_ranks_every_label_with_headline_ood_and_notice(client, images):
    r = client.post("/v1/predict", files=files(("a.png", images["png"])))
    image = r.json()["images"][0]
    probs = image["probabilities"]
    ranked = image["ranked"]
    assert [x["rank"] for x in ranked] == [1, 2, 3]
    assert [x["label"] for x in ranked] == sorted(probs, key=lambda n: -probs[n])
    for row in ranked:
        assert row["probability"] == probs[row["label"]]
        t = THRESHOLDS.get(row["label"])
        assert row["threshold"] == t
        assert row["above_threshold"] == (None if t is None else probs[row["label"]] >= t)
    top = ranked[0]
    assert image["top_finding"]["label"] == top["label"]
    present = [n for n in LABELS if THRESHOLDS.get(n) is not None and probs[n] >= THRESHOLDS[n]]
    if present:  # the headline names exactly the findings at or above their thresholds
        assert image["headline"].startswith("At or above threshold: ")
        assert [x.rsplit(" ", 1)[0] for x in image["headline"][23:].split(", ")] == present
    else:
        assert image["headline"].startswith("No finding at or above its threshold")
    assert image["ood"] == {"available": False, "flag": None, "score": None}
    assert image["notice"] == RESEARCH_NOTICE


def test_several_files_in_order_with_skipped(client, images):
    r = client.post(
        "/v1/predict",
        files=files(
            ("one.png", images["png"]), ("bad.png", b"hello"), ("two.dcm", images["dicom"])
        ),
    )
    body = r.json()
    assert r.status_code == 200
    assert [i["path"] for i in body["images"]] == ["one.png", "two.dcm"]
    assert body["skipped"][0]["path"] == "bad.png"
    assert body["skipped"][0]["reason"] == "unsupported"
    # the PNG and its DICOM copy are the same pixels
    assert body["images"][0]["probabilities"] == pytest.approx(
        body["images"][1]["probabilities"], abs=1e-5
    )


def test_format_is_decided_from_the_bytes_not_the_name(client, images):
    as_dicom = client.post(
        "/v1/predict", files=files(("scan.dcm", images["png"]), ctype="application/dicom")
    )
    as_png = client.post(
        "/v1/predict", files=files(("scan.png", images["dicom"]), ctype="image/png")
    )
    plain = client.post("/v1/predict", files=files(("scan.png", images["png"])))
    assert as_dicom.status_code == as_png.status_code == 200
    p = plain.json()["images"][0]["probabilities"]
    assert as_dicom.json()["images"][0]["probabilities"] == pytest.approx(p)
    assert as_png.json()["images"][0]["probabilities"] == pytest.approx(p, abs=1e-5)
    text = client.post("/v1/predict", files=files(("scan.png", b"%PDF-1.4 ..."), ctype="image/png"))
    assert text.status_code == 415


def test_unusable_images_get_415_or_422_with_the_reason(client, images, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    cases = {
        "notes.txt": (b"just some text", 415, "unsupported"),
        "empty.png": (b"", 422, "empty"),
        "cut.png": (images["png"][: len(images["png"]) // 2], 422, "truncated"),
        "cut.jpg": (images["jpeg"][: len(images["jpeg"]) // 2], 422, "truncated"),
        "bomb.png": (png_bomb(), 422, "too-large"),
        "nopixels.dcm": ((tmp_path / "nopixels.dcm").read_bytes(), 422, "unreadable"),
        "cut.dcm": (images["dicom"][:600], 422, None),
    }
    for name, (data, status, reason) in cases.items():
        r = client.post("/v1/predict", files=files((name, data)))
        assert r.status_code == status, (name, r.json())
        body = r.json()
        assert body["files"][0]["path"] == name
        if reason is not None:
            assert body["files"][0]["reason"] == reason, (name, body)
        assert body["detail"].startswith(f"{name}: ")
    # none readable, all unsupported -> 415; mixed reasons -> 422
    r = client.post("/v1/predict", files=files(("a.txt", b"x"), ("b.txt", b"y")))
    assert r.status_code == 415 and len(r.json()["files"]) == 2
    r = client.post("/v1/predict", files=files(("a.txt", b"x"), ("b.png", b"")))
    assert r.status_code == 422


def test_bad_requests_400_413_415_422(model_file, images):
    app = create_app(model_file, settings=ServeSettings(max_files=2, max_request_bytes=50_000))
    with TestClient(app) as c:
        r = c.post("/v1/predict", json={"files": []})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = c.post("/v1/predict", content=b"x", headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400
        r = c.post("/v1/predict", data={"note": "form-encoded"})
        assert r.status_code == 415
        r = c.post("/v1/predict", files={"note": (None, "a text field, no file")})
        assert r.status_code == 422 and "no image files" in r.json()["detail"]
        three = files(*((f"{i}.png", images["png"]) for i in range(3)))
        assert c.post("/v1/predict", files=three).status_code == 413
        big = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
        r = c.post("/v1/predict", files=files(("big.png", png_bytes(big))))
        assert r.status_code == 413 and "limit" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(100):
                yield b"-" * 1000

        r = c.post(
            "/v1/predict",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert r.status_code == 413
        assert c.post("/v1/predict", files=files(("ok.png", images["png"]))).status_code == 200
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/predict").status_code == 405


def test_client_file_names_are_display_only():
    assert display_name("../../etc/passwd", 0) == "passwd"
    assert display_name("C:\\Users\\x\\scan.dcm", 0) == "scan.dcm"
    assert display_name("a\x00b\nc.png", 0) == "abc.png"
    assert display_name("..", 4) == "upload-5"
    assert len(display_name("x" * 500 + ".png", 0)) == 120


def test_uploads_stay_in_memory_and_out_of_the_logs(client, tmp_path, monkeypatch, caplog, capfd):
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")

    big = gray_image(1400, 1200, seed=5)  # a 2.7 MB DICOM: Starlette would spool it to disk
    data = dicom_bytes(
        tmp_path,
        big,
        PatientName="Doe^Jane",
        PatientID="PID-987654",
        InstitutionName="St Elsewhere",
    )
    assert len(data) > 2 * 1024 * 1024
    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    caplog.set_level(logging.DEBUG)
    r = client.post("/v1/predict", files=files(("Jane_Doe_PID-987654.dcm", data)))
    assert r.status_code == 200
    bad = client.post("/v1/predict", files=files(("Jane_Doe_PID-987654.dcm", data[:5000])))
    assert bad.status_code == 422
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    for secret in ("Doe", "Jane", "987654", "Elsewhere"):
        assert secret not in logged


# explain and preview ----------------------------------------------------------------------
def test_explain_named_label_and_top_k(client, model_file, images):
    r = client.post(
        "/v1/explain", files=files(("a.png", images["png"]), field="file"), data={"labels": "Mass"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["notice"] == RESEARCH_NOTICE and body["path"] == "a.png"
    assert body["method"] == "gradcam" and body["input_size"] == 64
    side = body["display_size"]
    assert side == 512
    assert decode_png(body["image_png"]).shape == (side, side)
    (ex,) = body["explanations"]
    assert ex["label"] == "Mass" and ex["threshold"] == 0.6
    heat = decode_png(ex["heatmap_png"])
    assert heat.shape == (64, 64, 4)
    assert decode_png(ex["overlay_png"]).shape == (side, side, 3)
    # the heatmap is cxr.explain's, of the pixels cxr predict uses
    pixels = load_for_cache_bytes(images["png"], 64)
    model = Predictor(model_file).model
    (ref,) = explain(model, pixels, labels=["Mass"])
    assert np.abs(heat[..., 3].astype(int) - np.rint(ref.heatmap * 255)).max() <= 1
    assert ex["probability"] == pytest.approx(ref.probability, abs=1e-5)

    r = client.post(
        "/v1/explain",
        files=files(("a.png", images["png"]), field="file"),
        data={"top_k": "2", "method": "gradcam++"},
    )
    body = r.json()
    probs = client.post("/v1/predict", files=files(("a.png", images["png"]))).json()
    order = [x["label"] for x in probs["images"][0]["ranked"]]
    assert body["method"] == "gradcam++"
    assert [e["label"] for e in body["explanations"]] == order[:2]


def load_for_cache_bytes(data: bytes, size: int) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x"
        path.write_bytes(data)
        return load_for_cache(path, size)


def test_explain_errors(client, images):
    one = files(("a.png", images["png"]), field="file")
    bad = {
        "unknown label": ({"labels": "Fracture"}, one, 422),
        "top_k zero": ({"top_k": "0"}, one, 422),
        "top_k too big": ({"top_k": "4"}, one, 422),
        "top_k text": ({"top_k": "three"}, one, 422),
        "method": ({"method": "lime"}, one, 422),
        "two files": ({}, one + files(("b.png", images["other"]), field="file"), 422),
        "no file": (None, {"labels": (None, "Mass")}, 422),
        "not an image": ({}, files(("a.png", b"text"), field="file"), 415),
        "truncated": ({}, files(("a.png", images["png"][:300]), field="file"), 422),
    }
    for what, (data, upload, status) in bad.items():
        r = client.post("/v1/explain", data=data, files=upload)
        assert r.status_code == status, (what, r.json())
        assert isinstance(r.json()["detail"], str)


class NoTorchBackend(Backend):
    """A backend without a torch model (as the ONNX one): predictions, no Grad-CAM."""

    name = "no-torch"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.spec, self.thresholds = inner.spec, inner.thresholds
        self.training, self.path = inner.training, inner.path

    def probabilities(self, pixels):
        return self.inner.probabilities(pixels)

    def to_numpy(self, outputs):
        return self.inner.to_numpy(outputs)


def test_explanations_need_the_torch_backend(model_file, images):
    plain = Predictor(model_file)
    app = create_app(Predictor(NoTorchBackend(plain.backend)))
    with TestClient(app) as c:
        info = c.get("/v1/model").json()
        assert info["explanations"]["available"] is False
        assert info["backend"]["backend"] == "no-torch"
        r = c.post("/v1/explain", files=files(("a.png", images["png"]), field="file"))
        assert r.status_code == 501
        assert "explanations need the torch backend" in r.json()["detail"]
        r = c.post("/v1/predict", files=files(("a.png", images["png"])))
        assert r.status_code == 200


def test_unknown_backend_is_refused_by_name(model_file):
    with pytest.raises(ValueError, match="backend 'tensorrt' is not available"):
        create_app(model_file, backend="tensorrt")


def test_preview_renders_dicom_on_the_server(client, images):
    png = client.post("/v1/preview", files=files(("a.png", images["png"]), field="file"))
    mono2 = client.post("/v1/preview", files=files(("c.dcm", images["dicom"]), field="file"))
    mono1 = client.post("/v1/preview", files=files(("d.dcm", images["mono1"]), field="file"))
    for r in (png, mono2, mono1):
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    a, b, c = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (png, mono2, mono1))
    assert a.shape == (512, 512) and a.std() > 10
    assert np.abs(a.astype(int) - b).max() <= 1  # windowed like the PNG
    assert np.abs(b.astype(int) - c).max() <= 1  # MONOCHROME1 shown with dense tissue bright
    r = client.post("/v1/preview", files=files(("x.bin", b"\x00" * 300), field="file"))
    assert r.status_code == 415


# access, headers, page, docs --------------------------------------------------------------
def test_api_key_guards_v1_only(model_file, images):
    app = create_app(model_file, settings=ServeSettings(api_key="s3cret-key"))
    with TestClient(app) as c:
        r = c.get("/v1/model")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Basic s3cret-key"}).status_code == 401
        r = c.post("/v1/predict", files=files(("a.png", images["png"])))
        assert r.status_code == 401
        ok = {"Authorization": "Bearer s3cret-key"}
        assert c.get("/v1/model", headers=ok).status_code == 200
        r = c.post("/v1/predict", files=files(("a.png", images["png"])), headers=ok)
        assert r.status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path
        spec = c.get("/openapi.json").json()
        assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])


def test_cors_is_off_unless_origins_are_listed(model_file, client):
    preflight = {
        "Origin": "https://lab.example.org",
        "Access-Control-Request-Method": "POST",
    }
    r = client.options("/v1/predict", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/model", headers={"Origin": "https://lab.example.org"})
    assert "access-control-allow-origin" not in r.headers
    app = create_app(model_file, settings=ServeSettings(cors_origins=("https://lab.example.org",)))
    with TestClient(app) as c:
        r = c.options("/v1/predict", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://lab.example.org"
        r = c.get("/v1/model", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers


def test_security_headers_and_no_caching_of_results(client, images):
    r = client.post("/v1/predict", files=files(("a.png", images["png"])))
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_page_ships_in_the_package_and_loads_nothing_from_the_internet(client):
    from importlib import resources

    page = resources.files("cxr.serving").joinpath("page")
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in page.iterdir()}
    html = client.get("/").text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "static/app.js" in refs and "static/style.css" in refs
    for ref in refs:
        assert not re.match(r"^(https?:)?//", ref), ref
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200
        assert not re.search(r"https?://", r.text), name
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404
    assert "Research use only" in html


def test_openapi_document_and_offline_docs(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain"):
        assert path in paths, path
    body = paths["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["files"]["items"]["format"] == "binary"
    assert {"413", "415", "422", "503"} <= set(paths["/v1/predict"]["post"]["responses"])
    docs = client.get("/docs").text
    assert "swagger-ui" in docs.lower()
    assert not re.search(r"(src|href)=\"https?://", docs)  # Swagger UI's files are local
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


# metrics ----------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+-]+|\+Inf)$")


def parse_metrics(text: str) -> dict[str, float]:
    out, typed = {}, set()
    for line in text.strip().splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name = m.group(1)
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, name
        out[name + (m.group(2) or "")] = float(m.group(3))
    return out


def test_metrics_in_prometheus_text_format(client, images):
    client.post("/v1/predict", files=files(("a.png", images["png"]), ("b.png", images["other"])))
    client.post("/v1/predict", files=files(("a.txt", b"text")))
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    m = parse_metrics(r.text)
    assert m['cxr_http_requests_total{endpoint="/v1/predict",method="POST",code="200"}'] >= 1
    assert m['cxr_http_errors_total{endpoint="/v1/predict",code="415"}'] >= 1
    buckets = [
        v
        for k, v in m.items()
        if k.startswith('cxr_http_request_duration_seconds_bucket{endpoint="/v1/predict"')
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] == m['cxr_http_request_duration_seconds_count{endpoint="/v1/predict"}']
    assert m["cxr_batch_size_count"] >= 1 and m["cxr_images_predicted_total"] >= 2
    assert m["cxr_queue_depth"] == 0
    assert "cxr_queue_full_rejections_total" in m


# the micro-batcher ------------------------------------------------------------------------
def test_batcher_gathers_concurrent_images_and_bounds_its_queue():
    from concurrent.futures import ThreadPoolExecutor

    sizes: list[int] = []
    gate = threading.Event()

    def run(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return batch.reshape(len(batch), -1)[:, :2].astype(np.float32)

    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        b = MicroBatcher(
            run, pool, max_batch_size=4, max_wait_ms=50, max_queue=6, on_batch=sizes.append
        )
        await b.start()
        pixels = [np.full((2, 2), i, np.uint8) for i in range(10)]
        first = asyncio.ensure_future(b.submit(pixels[:1]))  # runs alone, held at the gate
        await asyncio.sleep(0.1)
        waiting = [asyncio.ensure_future(b.submit([p])) for p in pixels[1:7]]
        await asyncio.sleep(0.01)
        assert b.depth == 6 and b.free() == 0
        with pytest.raises(QueueFull):
            await b.submit(pixels[7:8])
        gate.set()
        results = await asyncio.gather(first, *waiting)
        for i, res in enumerate(results):
            assert res.shape == (1, 2) and res[0, 0] == i
        assert sizes == [1, 4, 2]
        both = await b.submit(pixels[8:10])  # a request's images stay in order
        assert both[:, 0].tolist() == [8, 9]
        await b.stop()
        pool.shutdown()

    asyncio.run(scenario())


def test_batcher_waits_for_company_only_while_a_request_is_on_its_way():
    from concurrent.futures import ThreadPoolExecutor

    def run(batch):
        return batch[:, 0, :1].astype(np.float32)

    async def two_requests(announce: bool) -> list[int]:
        sizes: list[int] = []
        pool = ThreadPoolExecutor(1)
        b = MicroBatcher(run, pool, max_batch_size=4, max_wait_ms=1000, on_batch=sizes.append)
        await b.start()
        pixels = [np.full((2, 2), i, np.uint8) for i in range(2)]

        async def second() -> np.ndarray:
            with b.arriving() if announce else contextlib.nullcontext():
                await asyncio.sleep(0.05)  # received and decoded meanwhile
            return await b.submit(pixels[1:])

        later = asyncio.ensure_future(second())
        await asyncio.sleep(0)  # the second request is announced before the first submits
        first = await b.submit(pixels[:1])
        assert (await later)[0, 0] == 1 and first[0, 0] == 0
        await b.stop()
        pool.shutdown()
        return sizes

    assert asyncio.run(two_requests(announce=True)) == [2]  # waited for the announced one
    assert asyncio.run(two_requests(announce=False)) == [1, 1]  # alone: ran at once


def test_batcher_reports_a_failed_batch_to_each_request():
    from concurrent.futures import ThreadPoolExecutor

    def run(batch):
        raise ValueError("broken model")

    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        b = MicroBatcher(run, pool, max_wait_ms=1)
        await b.start()
        for _ in range(2):
            with pytest.raises(ValueError, match="broken model"):
                await b.submit([np.zeros((2, 2), np.uint8)])
        await b.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await b.submit([np.zeros((2, 2), np.uint8)])
        pool.shutdown()

    asyncio.run(scenario())


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_queue"):
        ServeSettings(max_queue=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServeSettings(max_wait_ms=-1)
    with pytest.raises(ValueError, match="api_key"):
        ServeSettings(api_key=" spaced ")


def test_onnx_model_files_are_served_with_closed_form_heatmaps(model_file, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from cxr.inference import BACKENDS

    if "onnx" not in BACKENDS:
        pytest.skip("this cxr has no ONNX backend")
    from cxr.export import export_onnx

    onnx_file = tmp_path / "model.onnx"
    export_onnx(model_file, onnx_file)
    one = files(("a.png", images["png"]))
    with TestClient(create_app(model_file)) as c:
        by_torch = c.post("/v1/predict", files=one).json()["images"][0]
        torch_heat = c.post(
            "/v1/explain", files=files(("a.png", images["png"]), field="file"), data={"top_k": "1"}
        ).json()["explanations"][0]
    with TestClient(create_app(onnx_file)) as c:  # backend "auto": by the file
        info = c.get("/v1/model").json()
        assert info["backend"]["backend"] == "onnx" and info["labels"] == list(LABELS)
        assert info["versions"]["onnxruntime"]
        assert info["file"]["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
        by_onnx = c.post("/v1/predict", files=one).json()["images"][0]
        assert by_onnx["probabilities"] == pytest.approx(by_torch["probabilities"], abs=1e-4)
        assert by_onnx["ood"]["available"] is False
        r = c.post(
            "/v1/explain", files=files(("a.png", images["png"]), field="file"), data={"top_k": "1"}
        )
        assert r.status_code == 200 and info["explanations"]["available"] is True
        onnx_heat = r.json()["explanations"][0]
        assert onnx_heat["label"] == torch_heat["label"]
        a = decode_png(onnx_heat["heatmap_png"])[..., 3].astype(int)
        b = decode_png(torch_heat["heatmap_png"])[..., 3].astype(int)
        assert np.abs(a - b).max() <= 3
    with pytest.raises(ValueError, match="ONNX file"):
        create_app(onnx_file, backend="torch")
