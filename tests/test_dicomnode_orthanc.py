"""cxr.dicomnode against a real PACS: Orthanc (tests/orthanc_server.py) sends a DX image to
a DicomNode and receives its SR and SC into the same study.

Each test uploads a DX file to Orthanc (POST /instances), has Orthanc send it to the node
(POST /modalities/<cxr>/store), waits (at most a minute) for the SR and the SC in the
study, downloads them and checks: every probability in the SR (read with highdicom)
equals ``cxr predict --format json`` on the same file, the decisions follow the
thresholds, the SC decodes as RGB, both pass dciodvfy with no error. Results come back
by C-STORE, by STOW-RS to Orthanc's DICOMweb plugin, and after Orthanc sent over DICOM TLS
with a certificate authority the test makes. A caller not on the allow-list fails
Orthanc's job and the node keeps serving; sending the same image twice still leaves one
SR and one SC (same UIDs). Needs Orthanc (``make orthanc``; CXR_SKIP_ORTHANC=1 skips).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cxr.cli import main as cxr_main
from cxr.dicomnode import DicomNode
from cxr.dicomout import codes, result_uids
from cxr.dicomout.uids import source_image
from cxr.modelformat.filehash import file_sha256
from dicomnode_net import config, echo, make_model, phantom_dx, write_dx
from dicomout_files import dciodvfy, source_dx
from orthanc_server import ORTHANC_AET, Modality, Orthanc, OrthancTls, free_port
from orthanc_server import orthanc as orthanc  # the fixture
from test_dicomnode_scp import _pki

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: The SR holds each float32 probability as a float64 (FD): equal up to float32 rounding
#: of a second forward pass (the node batches, the CLI runs one image): 1e-6 absolute.
TOL = 1e-6
WAIT_S = 60.0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def cli_predict(model: Path, path: Path) -> dict:
    """The one image's entry of ``cxr predict MODEL PATH --format json``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cxr_main(["predict", str(model), str(path), "--format", "json", "--no-progress"])
    assert rc == 0
    data = json.loads(out.getvalue())
    (image,) = data["images"]
    image["thresholds"] = data["thresholds"]
    return image


def sr_findings(path: Path) -> dict[str, tuple[float, str | None]]:
    """label -> (probability, qualitative evaluation code or None), read with highdicom's
    TID 1500 parser (the gate's group, without a probability, is left out)."""
    sr = hd.sr.srread(path)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    out = {}
    for group in report.get_image_measurement_groups():
        probs = group.get_measurements(name=codes.PROBABILITY.code())
        if not probs:
            continue
        (p,) = probs
        evaluations = group.get_qualitative_evaluations()
        decision = str(evaluations[0].value.value) if evaluations else None
        out[str(group.tracking_identifier)] = (float(p.value), decision)
    return out


def node_config(tmp: Path, model: Path, send_to: str, port: int, **changes: object):
    return config(tmp, model, send_to, port=port, allow_aets=(ORTHANC_AET,), **changes)


def upload(pacs: Orthanc, path: Path) -> tuple[str, str]:
    """(instance ID, study ID) in Orthanc of the uploaded file."""
    answer = pacs.upload(path)
    assert answer["Status"] == "Success", answer
    return str(answer["ID"]), str(answer["ParentStudy"])


def wait_results(pacs: Orthanc, study: str, source: pydicom.Dataset, model: Path) -> dict:
    """Wait for the SR and SC of ``source`` in ``study``; {"sr"|"sc": Orthanc instance},
    after checking that the study holds exactly the source, one SR and one SC, with the
    UIDs derived from the source and the model."""
    sha, _ = file_sha256(model)
    want = {
        kind: result_uids(kind, source_image(source), sha).instance_uid for kind in ("sr", "sc")
    }
    instances = pacs.wait_for_instances(study, 3, timeout=WAIT_S)
    by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i for i in instances}
    assert sorted(by_uid) == sorted([source.SOPInstanceUID, *want.values()]), (
        f"study holds {sorted(by_uid)}; Orthanc's log:\n{pacs.log_tail()}"
    )
    series = {s["MainDicomTags"]["SeriesInstanceUID"] for s in pacs.series(study)}
    assert len(series) == 3
    return {kind: by_uid[uid] for kind, uid in want.items()}


def check_results(
    pacs: Orthanc,
    study: str,
    source_path: Path,
    model: Path,
    tmp: Path,
    origin: str = "DicomProtocol",
) -> dict[str, float]:
    """The end-to-end checks of the module docstring; the SR's probabilities. ``origin``:
    how Orthanc says the results came (``DicomProtocol``: a C-STORE from CXR;
    ``Plugins``: the DICOMweb plugin's STOW-RS)."""
    source = pydicom.dcmread(source_path)
    got = wait_results(pacs, study, source, model)
    for instance in got.values():
        meta = pacs.get_json(f"/instances/{instance['ID']}/metadata?expand")
        assert meta["Origin"] == origin, meta
        assert meta["RemoteAET"] == ("CXR" if origin == "DicomProtocol" else ""), meta
    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, instance in got.items():
        files[kind] = tmp / f"{kind}.dcm"
        files[kind].write_bytes(pacs.file(instance["ID"]))
    expected = cli_predict(model, source_path)
    findings = sr_findings(files["sr"])
    assert findings.keys() == expected["probabilities"].keys()
    for label, p in expected["probabilities"].items():
        assert findings[label][0] == pytest.approx(p, abs=TOL), label
        threshold = expected["thresholds"].get(label)
        if threshold is None:
            assert findings[label][1] is None
        else:  # present at or above the threshold, as cxr predict decides
            decision = codes.PRESENT if label in expected["above_threshold"] else codes.ABSENT
            assert findings[label][1] == decision.value, label
    sr, sc = (pydicom.dcmread(files[k]) for k in ("sr", "sc"))
    assert sr.SOPClassUID == SR_CLASS and sc.SOPClassUID == SC_CLASS
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
    assert sc.SamplesPerPixel == 3 and sc.PhotometricInterpretation == "RGB"
    assert sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array
    assert pixels.shape == (sc.Rows, sc.Columns, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 0  # an image, not a blank frame
    for path in files.values():
        lines = dciodvfy(path)
        assert not [ln for ln in lines if ln.startswith("Error")], lines
    return {label: value[0] for label, value in findings.items()}


def nih_dx(shared_datasets: Path, tmp: Path) -> Path:
    """One NIH ChestX-ray14 sample image as a DX file (uint16, 12 bits stored)."""
    from PIL import Image

    images = sorted((shared_datasets / "nih14-sample" / "images").glob("*.png"))
    if not images:
        pytest.skip("no NIH sample images in ../shared/datasets/nih14-sample/images")
    gray = np.asarray(Image.open(images[0]).convert("L"), dtype=np.uint16)
    ds = source_dx(sop_uid="1.2.826.0.1.3680043.8.498.27.1", size=8)
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.27"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.27.0"
    ds.Rows, ds.Columns = gray.shape
    ds.PixelData = (gray * 16).tobytes()
    return write_dx(tmp / "nih.dcm", ds)


# C-STORE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("image", ["phantom", "nih-sample"])
def test_orthanc_sends_by_cstore_and_gets_sr_and_sc(orthanc, tmp_path, model, image, request):
    if image == "phantom":
        path = write_dx(tmp_path / "dx.dcm", phantom_dx(1, size=128))
    else:
        path = nih_dx(request.getfixturevalue("shared_datasets"), tmp_path)
    port = free_port()
    pacs = orthanc([Modality("cxr", "CXR", port)])
    instance, study = upload(pacs, path)
    with DicomNode(node_config(tmp_path, model, pacs.send_to, port)) as node:
        assert pacs.post_json("/modalities/cxr/echo", {}) == {}
        answer = pacs.store("cxr", [instance])
        assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == 1
        check_results(pacs, study, path, model, tmp_path)
        assert node.wait_idle(WAIT_S)
        status = node.status()
    assert len(status["sent"]) == 1 and not status["failed"]


# STOW-RS -----------------------------------------------------------------------------------
def test_results_come_back_by_stow_rs(orthanc, tmp_path, model):
    path = write_dx(tmp_path / "dx.dcm", phantom_dx(2, size=128))
    port = free_port()
    pacs = orthanc([Modality("cxr", "CXR", port)])
    instance, study = upload(pacs, path)
    with DicomNode(node_config(tmp_path, model, pacs.dicomweb, port)) as node:
        assert node.config.destination.kind == "stow"
        pacs.store("cxr", [instance])
        check_results(pacs, study, path, model, tmp_path, origin="Plugins")
        assert node.wait_idle(WAIT_S)


# TLS ---------------------------------------------------------------------------------------
def test_orthanc_sends_over_dicom_tls_with_a_client_certificate(orthanc, tmp_path, model):
    """The node listens with TLS and requires a client certificate signed by the test's CA;
    Orthanc (1.9+ supports DICOM TLS as a client) presents one. The same node refuses
    Orthanc without TLS. Results come back by plain C-STORE."""
    (tmp_path / "pki").mkdir()
    pki = _pki(tmp_path / "pki")
    path = write_dx(tmp_path / "dx.dcm", phantom_dx(3, size=128))
    port = free_port()
    tls = OrthancTls(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    pacs = orthanc([Modality("cxr", "CXR", port, tls=True), Modality("plain", "CXR", port)], tls)
    instance, study = upload(pacs, path)
    settings = dict(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_ca=pki / "ca.pem")
    with DicomNode(node_config(tmp_path, model, pacs.send_to, port, **settings)) as node:
        job = pacs.wait_job(pacs.store_job("plain", [instance]))
        assert job["State"] == "Failure", job
        assert not node.status()["incoming"]
        answer = pacs.store("cxr", [instance])
        assert answer["FailedInstancesCount"] == 0
        check_results(pacs, study, path, model, tmp_path)


# refusals ----------------------------------------------------------------------------------
def test_a_calling_aet_off_the_allow_list_fails_orthancs_job(orthanc, tmp_path, model):
    """Orthanc calls as STRANGER (its LocalAet for modality "stranger"): the association
    is rejected, the job fails, nothing is spooled; the node keeps serving Orthanc."""
    path = write_dx(tmp_path / "dx.dcm", phantom_dx(4, size=128))
    port = free_port()
    pacs = orthanc(
        [Modality("stranger", "CXR", port, local_aet="STRANGER"), Modality("cxr", "CXR", port)]
    )
    instance, study = upload(pacs, path)
    with DicomNode(node_config(tmp_path, model, pacs.send_to, port)) as node:
        job = pacs.wait_job(pacs.store_job("stranger", [instance]))
        assert job["State"] == "Failure", job
        assert echo(port, calling="STRANGER") is None
        status = node.status()
        assert not status["incoming"] and not status["sent"] and not status["pending"]
        assert len(pacs.instances(study)) == 1  # no result for a refused image
        assert echo(port, calling=ORTHANC_AET) == 0x0000
        pacs.store("cxr", [instance])
        check_results(pacs, study, path, model, tmp_path)


def test_sending_the_same_image_twice_leaves_one_sr_and_one_sc(orthanc, tmp_path, model):
    """The second SR and SC carry the first ones' UIDs: Orthanc (OverwriteInstances)
    records their arrival again, under the same instance IDs, and the study still holds
    the source, one SR and one SC."""
    path = write_dx(tmp_path / "dx.dcm", phantom_dx(5, size=128))
    port = free_port()
    pacs = orthanc([Modality("cxr", "CXR", port)])
    instance, study = upload(pacs, path)
    source = pydicom.dcmread(path)
    with DicomNode(node_config(tmp_path, model, pacs.send_to, port)) as node:
        pacs.store("cxr", [instance])
        first = check_results(pacs, study, path, model, tmp_path / "first")
        assert node.wait_idle(WAIT_S)
        results = {i["ID"] for i in wait_results(pacs, study, source, model).values()}
        since = max(c["Seq"] for c in pacs.changes())
        pacs.store("cxr", [instance])
        assert node.wait_idle(WAIT_S)
        status = node.status()
        assert not status["failed"] and not status["pending"]
        second = check_results(pacs, study, path, model, tmp_path / "second")
    assert second == first
    arrived = {c["ID"] for c in pacs.changes(since) if c["ChangeType"] == "NewInstance"}
    assert arrived == results  # both sent again, both replaced the stored ones
    assert len(pacs.instances(study)) == 3
