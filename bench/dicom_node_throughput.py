"""Throughput and latency of the DICOM node from Orthanc through cxr and back into Orthanc,
beside ``cxr predict --dicom-out`` on the same files in one process (issue 27's target:
the node >= 0.8 of the in-process throughput).

N DX images (the NIH sample's PNGs from ../shared/datasets/nih14-sample when present, else
chest phantoms; 1,024 x 1,024, 16-bit, 12 bits stored) in one study are uploaded to an
Orthanc the script starts (Debian's orthanc and orthanc-dicomweb, as the tests do:
tests/orthanc_server.py, ``make orthanc``). A DicomNode (Python API) listens; Orthanc sends
the whole study to it in one C-STORE request (POST /modalities/cxr/store); the node
answers each image with an SR and an SC sent back by C-STORE (``--stow``: STOW-RS to
Orthanc's DICOMweb plugin). Measured:

- images per minute: N over the time from the store request until the last SR is in
  Orthanc (polled on GET /changes every 20 ms: the arrival times are good to ~20 ms);
- per-image latency: from the node's receipt of the image (the end of its C-STORE, logged
  by the node) to its SR's arrival in Orthanc, p50 and p95;
- in one process, the same model object: ``Predictor.predict_images`` on the N files and
  ``write_dicom_results`` (the same SR and SC, Grad-CAM included) to a folder.

The node and the in-process run share one Predictor (one model load, warmed up on one
image first). The default model is an untrained cxr-small-cnn at 224 px that the script
saves in a second (throughput only: its probabilities mean nothing); give a trained model
with --model. Prints a Markdown table; writes JSON (--out).

Usage: python bench/dicom_node_throughput.py [--images 40] [--model M.safetensors]
       [--size 1024] [--device cpu] [--batch-size 8] [--stow] [--phantoms] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from _common import machine, machine_line, markdown, percentiles_ms, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # Orthanc's start-up and REST calls, as the tests do
from orthanc_server import ORTHANC_AET, Modality, Orthanc, free_port  # noqa: E402

NIH = ROOT.parent / "shared" / "datasets" / "nih14-sample" / "images"
STUDY = "1.2.826.0.1.3680043.8.498.2727"
TARGET = 0.8


# inputs ------------------------------------------------------------------------------------
def tiny_model(path: Path, size: int = 224) -> Path:
    """An untrained cxr-small-cnn (input ``size`` px, 14 NIH labels, thresholds 0.5)."""
    import torch

    from cxr.labels import NIH14_LABELS
    from cxr.modelfile import save_model
    from cxr.models import ModelSpec, Preprocessing, build_model

    torch.manual_seed(0)
    spec = ModelSpec(
        labels=tuple(NIH14_LABELS),
        backbone="cxr-small-cnn",
        preprocessing=Preprocessing(size=size),
    )
    model = build_model(spec).eval()
    save_model(path, model, thresholds={label: 0.5 for label in NIH14_LABELS})
    return path


def pictures(n: int, size: int, phantoms: bool) -> tuple[list[np.ndarray], str]:
    """n uint16 (size, size) images (12 bits used) and where they came from."""
    from PIL import Image

    files = [] if phantoms else sorted(NIH.glob("*.png"))
    if files:
        out = []
        for i in range(n):  # cycle when the sample has fewer than n
            gray = Image.open(files[i % len(files)]).convert("L").resize((size, size))
            out.append(np.asarray(gray, dtype=np.uint16) * 16)
        return out, f"NIH sample ({min(n, len(files))} distinct PNGs)"
    from cxr.synth.render import render_phantom

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image, _ = render_phantom(rng, size, ["Effusion"] if i % 2 else [])
        out.append((image.astype(np.uint16) * 16).clip(0, 4095))
    return out, "chest phantoms"


def dx_file(path: Path, pixels: np.ndarray, index: int) -> Path:
    """A DX (for presentation) of ``pixels`` (uint16 (H, W)), instance ``index`` of STUDY."""
    uid = UID(f"{STUDY}.1.{index}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = f"{STUDY}.1"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Chest", "B1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.BodyPartExamined, ds.Manufacturer = "DX", "CHEST", "cxr bench"
    ds.SeriesNumber, ds.InstanceNumber = 1, index
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# measuring ---------------------------------------------------------------------------------
class Receipts(logging.Handler):
    """time.monotonic() of each "C-STORE <uid> ...: stored" line the node logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("C-STORE") and record.msg.endswith("stored (%d bytes)"):
            self.times[str(record.args[0])] = time.monotonic()  # type: ignore[index]


def watch_srs(pacs: Orthanc, wanted: dict[str, str], since: int, timeout: float) -> dict:
    """Poll Orthanc's /changes until every SR in ``wanted`` (SR SOP Instance UID -> source
    UID) arrived; {source UID: monotonic arrival time}."""
    arrived: dict[str, float] = {}
    end = time.monotonic() + timeout
    while len(arrived) < len(wanted) and time.monotonic() < end:
        for change in pacs.changes(since):
            since = max(since, int(change["Seq"]))
            if change["ChangeType"] != "NewInstance":
                continue
            now = time.monotonic()
            tags = pacs.get_json(f"/instances/{change['ID']}")["MainDicomTags"]
            source = wanted.get(tags.get("SOPInstanceUID", ""))
            if source is not None and source not in arrived:
                arrived[source] = now
        time.sleep(0.02)
    return arrived


def run_node(predictor, files, work: Path, stow: bool, timeout: float) -> dict:
    """Orthanc -> node -> Orthanc on ``files``; seconds, latencies, images per minute."""
    import pydicom

    from cxr.dicomnode import DicomNode, NodeConfig
    from cxr.dicomout import result_uids
    from cxr.dicomout.uids import source_image
    from cxr.modelformat.filehash import file_sha256

    port = free_port()
    pacs = Orthanc(work / "orthanc", [Modality("cxr", "CXR", port)]).start()
    try:
        ids = [pacs.upload(path)["ID"] for path in files]
        sha, _ = file_sha256(predictor.path)
        wanted = {
            result_uids(
                "sr", source_image(pydicom.dcmread(p, stop_before_pixels=True)), sha
            ).instance_uid: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in files
        }
        config = NodeConfig(
            model=predictor.path,
            spool=work / "spool",
            send_to=pacs.dicomweb if stow else pacs.send_to,
            port=port,
            allow_aets=(ORTHANC_AET,),
            batch_size=predictor.batch_size,
        )
        receipts = Receipts()
        log = logging.getLogger("cxr.dicomnode")
        log.addHandler(receipts)
        log.setLevel(logging.INFO)
        since = max((int(c["Seq"]) for c in pacs.changes()), default=0)
        with DicomNode(config, predictor):
            start = time.monotonic()
            sender = threading.Thread(target=pacs.store, args=("cxr", ids), daemon=True)
            sender.start()
            arrived = watch_srs(pacs, wanted, since, timeout)
            sender.join(timeout)
        log.removeHandler(receipts)
    finally:
        pacs.stop()
    if len(arrived) < len(files):
        raise SystemExit(f"only {len(arrived)} of {len(files)} SRs arrived in {timeout:.0f} s")
    seconds = max(arrived.values()) - start
    latencies = [arrived[uid] - receipts.times[uid] for uid in arrived if uid in receipts.times]
    return {
        "seconds": seconds,
        "images_per_minute": 60 * len(files) / seconds,
        "latency_ms": percentiles_ms(latencies, (50, 95)),
        "latency_from_request_ms": percentiles_ms([t - start for t in arrived.values()], (50, 95)),
        "results_by": "STOW-RS" if stow else "C-STORE",
    }


def run_in_process(predictor, files, out: Path) -> dict:
    """``cxr predict --dicom-out`` on ``files`` in this process: seconds, images/min."""
    from cxr.dicomout.from_prediction import write_dicom_results

    start = time.monotonic()
    result = predictor.predict_images(list(files))
    written = write_dicom_results(predictor, result, out)
    seconds = time.monotonic() - start
    assert len(written) == 2 * len(files), written
    return {"seconds": seconds, "images_per_minute": 60 * len(files) / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--model", type=Path, help="model file (default: an untrained small CNN)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--stow", action="store_true", help="results back by STOW-RS")
    ap.add_argument("--phantoms", action="store_true", help="phantoms even if NIH is present")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for SRs")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/dicom_node_throughput.json"))
    args = ap.parse_args()

    import torch

    from cxr.inference import Predictor

    with tempfile.TemporaryDirectory(prefix="cxr-bench-node-") as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work / "small-cnn.safetensors")
        images, source = pictures(args.images, args.size, args.phantoms)
        files = [dx_file(work / f"dx{i:03d}.dcm", im, i + 1) for i, im in enumerate(images)]
        predictor = Predictor(model, device=args.device, batch_size=args.batch_size)
        predictor.predict_images(files[:1])  # warm-up: lazy initialisation, kernels
        node = run_node(predictor, files, work / "node", args.stow, args.timeout)
        local = run_in_process(predictor, files, work / "in-process")

    ratio = node["images_per_minute"] / local["images_per_minute"]
    print(machine_line(torch=torch.__version__))
    print(
        f"{len(files)} DX images ({source}, {args.size} x {args.size}, 16-bit), model "
        f"{model.name if args.model else 'untrained cxr-small-cnn'}, {args.device}, "
        f"batch {args.batch_size}\n"
    )
    p50, p95 = node["latency_ms"]["p50"], node["latency_ms"]["p95"]
    print(
        markdown(
            ["path", "images/min", "total (s)", "latency p50 (ms)", "latency p95 (ms)"],
            [
                [
                    f"Orthanc -> cxr dicom -> Orthanc ({node['results_by']})",
                    f"{node['images_per_minute']:.1f}",
                    f"{node['seconds']:.1f}",
                    f"{p50:.0f}",
                    f"{p95:.0f}",
                ],
                [
                    "cxr predict --dicom-out, one process",
                    f"{local['images_per_minute']:.1f}",
                    f"{local['seconds']:.1f}",
                    "-",
                    "-",
                ],
            ],
        )
    )
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"\nnode / in-process throughput: {ratio:.2f} ({verdict} the target {TARGET})")
    write_json(
        args.out,
        {
            "machine": machine(args.device),
            "images": len(files),
            "source": source,
            "size": args.size,
            "model": str(args.model) if args.model else "untrained cxr-small-cnn 224 px",
            "device": args.device,
            "batch_size": args.batch_size,
            "node": node,
            "in_process": local,
            "ratio": ratio,
            "target": TARGET,
        },
    )


if __name__ == "__main__":
    main()
