"""The DICOM SR that ``cxr serve`` offers for a DICOM upload (cxr.serving.dicomsr and
cxr.serving.results): the URL in ``/v1/predict``'s answer, the download, its numbers
against the JSON's, the API key, the 404 of an unknown or expired token, and the bounded
store."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
hd = pytest.importorskip("highdicom", reason="the dicom-node extra is not installed")

with warnings.catch_warnings():  # Starlette's note that it prefers httpx2 to httpx
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient  # noqa: E402

from cxr.serving import ServeSettings, create_app  # noqa: E402
from cxr.serving.dicomsr import sr_filename, sr_path  # noqa: E402
from cxr.serving.results import ResultStore  # noqa: E402
from dicomout_files import SOP_UID, STUDY_UID, dciodvfy, source_dx  # noqa: E402
from test_serving_api import dicom_bytes, files, gray_image, png_bytes, write_model  # noqa: E402


def dx_bytes(sop_uid: str = SOP_UID, **attrs) -> bytes:
    """A DX image (with its study, series and SOP instance UIDs) as file bytes."""
    ds = source_dx(sop_uid=sop_uid, size=80)
    for key, value in attrs.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_sr(data: bytes):
    """The SR as highdicom reads it, and label -> (probability, threshold, evaluation)."""
    sr = hd.sr.srread(io.BytesIO(data))
    numbers = {}
    for group in sr.content.get_image_measurement_groups():
        values = {m.name.meaning: float(m.value) for m in group.get_measurements()}
        (evaluation,) = [q.value.meaning for q in group.get_qualitative_evaluations()] or [None]
        numbers[group.tracking_identifier] = (
            values.get("Probability"),
            values.get("Threshold Value"),
            evaluation,
        )
    return sr, numbers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("sr_model") / "model.safetensors")


@pytest.fixture(scope="module")
def client(model_file) -> Iterator[TestClient]:
    with TestClient(create_app(model_file, settings=ServeSettings(max_wait_ms=1))) as c:
        yield c


def test_a_dicom_upload_gets_an_sr_of_exactly_its_prediction(client, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    dx = dx_bytes(PatientName="Doe^Jane", PatientID="PID-987654")
    png = png_bytes(gray_image())
    r = client.post(
        "/v1/predict",
        files=files(("photo.png", png), ("bad.png", b"hello"), ("Jane chest.dcm", dx)),
    )
    assert r.status_code == 200
    body = r.json()
    assert [i["path"] for i in body["images"]] == ["photo.png", "Jane chest.dcm"]
    photo, image = body["images"]
    assert photo["sr"] is None  # a PNG has no source UIDs to reference
    assert photo["sr_note"].startswith("not a DICOM upload")
    assert image["sr"].startswith("/v1/results/") and image["sr"].endswith("/sr.dcm")
    assert image["sr_note"] == "" and body["notes"] == []  # the notes of cxr predict

    got = client.get(image["sr"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/dicom"
    assert got.headers["content-disposition"] == 'attachment; filename="Jane_chest_sr.dcm"'
    assert got.headers["cache-control"] == "no-store"
    sr, numbers = read_sr(got.content)
    # the same probabilities, thresholds and decisions as the JSON of this image
    assert set(numbers) == set(body["labels"])
    for label, p_json in image["probabilities"].items():
        p, t, evaluation = numbers[label]
        assert p == pytest.approx(p_json, abs=1e-6)
        assert t == body["thresholds"].get(label)
        if t is None:
            assert evaluation is None
        else:
            assert evaluation == ("Present" if label in image["above_threshold"] else "Absent")
    # in the source's study, referencing the uploaded instance
    assert sr.StudyInstanceUID == STUDY_UID and sr.PatientID == "PID-987654"
    (series,) = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_UID
    # nothing of the patient in the service's logs
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    for secret in ("Doe", "Jane", "987654"):
        assert secret not in logged
    # a valid SR, and one a retry of the same image reproduces (same UIDs, new token)
    path = tmp_path / "upload_sr.dcm"
    path.write_bytes(got.content)
    lines = dciodvfy(path)
    assert not [ln for ln in lines if ln.startswith("Error")], lines
    again = client.post("/v1/predict", files=files(("again.dcm", dx))).json()["images"][0]
    assert again["sr"] != image["sr"]
    second = pydicom.dcmread(io.BytesIO(client.get(again["sr"]).content))
    assert second.SOPInstanceUID == sr.SOPInstanceUID
    # the tokens are not in the metrics
    metrics = client.get("/metrics").text
    token = image["sr"].split("/")[3]
    assert token not in metrics and 'endpoint="/v1/results/"' in metrics


def test_no_sr_without_source_uids_or_highdicom_and_the_notes_say_why(
    client, tmp_path, monkeypatch
):
    plain = dicom_bytes(tmp_path, gray_image())  # a Secondary Capture without study UIDs
    body = client.post("/v1/predict", files=files(("sc.dcm", plain))).json()
    assert body["images"][0]["sr"] is None and body["notes"] == []
    assert "has no StudyInstanceUID" in body["images"][0]["sr_note"]

    def refuse(source, record):
        raise AttributeError("no attribute 'Modality'")

    with monkeypatch.context() as m:  # a source highdicom cannot use: the prediction stands
        m.setattr("cxr.serving.dicomsr.build_sr", refuse)
        r = client.post("/v1/predict", files=files(("odd.dcm", dx_bytes())))
    assert r.status_code == 200 and r.json()["images"][0]["sr"] is None
    assert r.json()["images"][0]["sr_note"].startswith("highdicom cannot use this source")

    monkeypatch.setitem(sys.modules, "highdicom", None)  # `import highdicom` fails
    body = client.post(
        "/v1/predict", files=files(("a.dcm", dx_bytes()), ("b.dcm", dx_bytes("1.2.3.4")))
    ).json()
    assert [i["sr"] for i in body["images"]] == [None, None]
    for image in body["images"]:
        assert "highdicom" in image["sr_note"] and "cxr[dicom-node]" in image["sr_note"]
    (note,) = body["notes"]  # once, however many DICOMs
    assert "highdicom" in note and "cxr[dicom-node]" in note


def test_unknown_or_expired_tokens_get_404(client):
    for token in ("nope", "A" * 32, "..", "%2e%2e"):
        r = client.get(f"/v1/results/{token}/sr.dcm")
        assert r.status_code == 404, token
        assert isinstance(r.json()["detail"], str)
    r = client.get("/v1/results/nope/sr.dcm")
    assert "unknown or expired" in r.json()["detail"]


def test_the_sr_needs_the_api_key(model_file):
    settings = ServeSettings(api_key="s3cret-key", max_wait_ms=1)
    ok = {"Authorization": "Bearer s3cret-key"}
    with TestClient(create_app(model_file, settings=settings)) as c:
        r = c.post("/v1/predict", files=files(("a.dcm", dx_bytes())), headers=ok)
        url = r.json()["images"][0]["sr"]
        assert url
        missing = c.get(url)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert c.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(url, headers=ok).status_code == 200


def test_the_service_keeps_the_last_srs_only(model_file):
    settings = ServeSettings(results_kept=2, max_wait_ms=1)
    with TestClient(create_app(model_file, settings=settings)) as c:
        uploads = [(f"{i}.dcm", dx_bytes(f"1.2.826.0.1.3680043.8.498.9{i}")) for i in range(3)]
        body = c.post("/v1/predict", files=files(*uploads)).json()
        urls = [i["sr"] for i in body["images"]]
        assert all(urls) and len(set(urls)) == 3
        assert [c.get(u).status_code for u in urls] == [404, 200, 200]
        assert c.app.state.service.results.max_entries == 2
        assert len(c.app.state.service.results) == 2
        limits = c.get("/v1/model").json()["limits"]
        assert limits["results_kept"] == 2 and limits["results_ttl_s"] == 900


def test_result_store_is_bounded_by_count_bytes_and_time():
    now = [0.0]
    store = ResultStore(max_entries=3, max_bytes=100, ttl_s=10, clock=lambda: now[0])
    tokens = [store.put(bytes([i]) * 10, f"{i}.dcm", "application/dicom") for i in range(5)]
    assert all(isinstance(t, str) and len(t) >= 32 for t in tokens)
    assert len(set(tokens)) == 5
    assert [store.get(t) is not None for t in tokens] == [False, False, True, True, True]
    kept = store.get(tokens[4])
    assert kept is not None and kept.data == bytes([4]) * 10 and kept.filename == "4.dcm"
    assert len(store) == 3 and store.n_bytes == 30
    # bytes: a large result pushes the oldest out; one over the limit is not kept
    big = store.put(b"x" * 85, "big.dcm", "application/dicom")
    assert big is not None and len(store) == 2 and store.n_bytes == 95
    assert [store.get(t) is not None for t in tokens[2:]] == [False, False, True]
    assert store.put(b"x" * 101, "huge.dcm", "application/dicom") is None
    assert store.get(big) is not None and len(store) == 2
    # time: gone after ttl_s
    now[0] = 9.9
    assert store.get(big) is not None
    now[0] = 10.0
    assert store.get(big) is None and len(store) == 0 and store.n_bytes == 0
    for bad in ({"max_entries": 0}, {"max_bytes": True}, {"ttl_s": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ResultStore(**bad)


def test_download_names_and_urls():
    assert sr_filename("chest.dcm") == "chest_sr.dcm"
    assert sr_filename("Scan 1.DICOM") == "Scan_1_sr.dcm"
    assert sr_filename('x";\r\n.dcm') == "x_sr.dcm"
    assert sr_filename("...") == "image_sr.dcm"
    assert sr_filename("a" * 200 + ".dcm") == "a" * 80 + "_sr.dcm"
    assert sr_path("", "tok") == "/v1/results/tok/sr.dcm"
    assert sr_path("/cxr/", "tok") == "/cxr/v1/results/tok/sr.dcm"


def test_openapi_documents_the_sr(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/results/{token}/sr.dcm"]["get"]
    assert "application/dicom" in op["responses"]["200"]["content"]
    assert "404" in op["responses"]
    image = spec["components"]["schemas"]["ImageResult"]["properties"]["sr"]
    assert "DICOM" in image["description"] and "null" in json.dumps(image)
    assert "/v1/results/{token}/sr.dcm" in spec["info"]["description"]


def test_an_sr_built_for_a_gated_image_says_so(model_file, tmp_path):
    """A model with the not-a-chest-X-ray gate: the SR of a flagged image holds the gate's
    group only (the JSON's flag), as cxr predict --dicom-out writes it."""
    from cxr.inference import Predictor
    from cxr.modelfile import with_ood
    from cxr.ood import fit_ood_gate

    rng = np.random.default_rng(0)
    pixels = rng.integers(90, 110, (40, 64, 64), dtype=np.uint8)
    _, pooled = Predictor(model_file).backend.features(pixels)
    gated = with_ood(model_file, fit_ood_gate(pooled[:30], pooled[30:]), tmp_path / "g.safetensors")
    with TestClient(create_app(gated, settings=ServeSettings(max_wait_ms=1))) as c:
        image = c.post("/v1/predict", files=files(("a.dcm", dx_bytes()))).json()["images"][0]
        assert image["ood"]["flag"] is True
        _, numbers = read_sr(c.get(image["sr"]).content)
    assert numbers == {"not-a-chest-X-ray gate": (None, None, "Present")}
