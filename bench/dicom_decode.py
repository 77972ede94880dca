"""Decode time per DICOM transfer syntax of one 2,048 x 2,048 16-bit radiograph.

The script writes the image itself (a smooth chest-like phantom with noise, 16 bits
stored) in each transfer syntax cxr decodes: uncompressed (implicit/explicit little
endian, explicit big endian, deflate), RLE, JPEG Lossless (process 14, SV1: encoded here,
pydicom has no encoder for it), JPEG-LS lossless, JPEG 2000 lossless; checks that each
decodes to the same pixels; and times ``cxr.images.load_for_cache(path, 224)`` (decode,
LUTs, resize to the model's square) and pydicom's ``pixel_array`` alone.

Usage: python bench/dicom_decode.py [--repeats 5] [--size 2048] [--out DIR]
"""

from __future__ import annotations

import argparse
import heapq
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from _common import machine_line, median_time  # bench/ is on sys.path when run as a script
from cxr.images import load_for_cache


def radiograph(size: int, seed: int = 0) -> np.ndarray:
    """uint16 (size, size): two dark lungs in a bright body, ribs, a spine, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.55) / 0.48) ** 6))
    lungs = sum(
        np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.28) ** 2) * 2) for cx in (0.32, 0.68)
    )
    ribs = 0.08 * (np.sin(y * 60 + 8 * (x - 0.5) ** 2) > 0.6) * body
    spine = 0.35 * np.exp(-(((x - 0.5) / 0.035) ** 2))
    img = 0.15 + 0.7 * body - 0.45 * lungs + ribs + spine * body
    img += rng.normal(0, 0.001, img.shape).astype(np.float32)  # ~60 grey levels
    return np.clip(img * 60000, 0, 65535).astype(np.uint16)


def base_dataset(arr: np.ndarray) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PatientID = "DX", "CHEST", "PA", "B1"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = arr.tobytes()
    return ds


# JPEG Lossless, process 14, first-order prediction (SV1) ------------------------------
def _huffman_lengths(freq: np.ndarray) -> dict[int, int]:
    """Code lengths of the categories with freq > 0, plus a reserved symbol -1 that takes
    the all-ones code (JPEG forbids it); lengths <= 16 for 17 categories."""
    heap = [(int(f), s, [s]) for s, f in enumerate(freq) if f > 0] + [(0, -1, [-1])]
    heapq.heapify(heap)
    lengths = {s: 0 for _, _, (s,) in heap}
    while len(heap) > 1:
        f1, k1, s1 = heapq.heappop(heap)
        f2, k2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, min(k1, k2), s1 + s2))
    if max(lengths.values()) > 16:
        raise ValueError("Huffman code longer than 16 bits")
    return lengths


def encode_jpeg_lossless(arr: np.ndarray) -> bytes:
    """A baseline-free lossless JPEG (SOF3, Huffman, predictor 1, Pt 0) of uint16 (H, W)."""
    h, w = arr.shape
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]  # Ra
    pred[1:, 0] = x[:-1, 0]  # Rb for the first column
    pred[0, 0] = 1 << 15
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff).ravel()
    mag = np.abs(diff)
    ssss = np.where(mag == 0, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) + 1)
    ssss = np.where(diff == 32768, 16, ssss)
    extra = np.where(diff < 0, diff + (1 << ssss) - 1, diff)
    extra = np.where(ssss == 16, 0, extra)
    n_extra = np.where(ssss == 16, 0, ssss)

    lengths = _huffman_lengths(np.bincount(ssss, minlength=17))
    order = sorted(lengths, key=lambda s: (lengths[s], s == -1, s))  # canonical, -1 last
    code, last_len, codes = 0, lengths[order[0]], {}
    for s in order:
        code <<= lengths[s] - last_len
        last_len = lengths[s]
        codes[s] = code
        code += 1
    table_code = np.zeros(17, np.int64)
    table_len = np.zeros(17, np.int64)
    for s in range(17):
        if s in codes:
            table_code[s], table_len[s] = codes[s], lengths[s]
    value = (table_code[ssss] << n_extra) | extra
    nbits = table_len[ssss] + n_extra
    ends = np.cumsum(nbits)
    starts = ends - nbits
    total = int(ends[-1])
    bits = np.ones(((total + 7) // 8) * 8, np.uint8)  # pad with 1s
    for k in range(int(nbits.max())):
        sel = nbits > k
        bits[starts[sel] + k] = (value[sel] >> (nbits[sel] - 1 - k)) & 1
    data = np.packbits(bits)
    ff = np.flatnonzero(data == 0xFF)
    data = np.insert(data, ff + 1, 0)  # byte stuffing

    symbols = [s for s in order if s != -1]
    counts = [sum(1 for s in symbols if lengths[s] == n) for n in range(1, 17)]
    dht = bytes([0x00, *counts, *symbols])
    sof = bytes([16]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body

    return (
        b"\xff\xd8"
        + segment(0xC3, sof)
        + segment(0xC4, dht)
        + segment(0xDA, sos)
        + data.tobytes()
        + b"\xff\xd9"
    )


def write_all(arr: np.ndarray, out: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}

    def save(name: str, ds: Dataset, **kw) -> None:
        path = out / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True, **kw)
        files[name] = path

    save("Explicit VR Little Endian", base_dataset(arr))
    ds = base_dataset(arr)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    save("Implicit VR Little Endian", ds, implicit_vr=True, little_endian=True)
    ds = base_dataset(arr)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = arr.byteswap().tobytes()
    save("Explicit VR Big Endian", ds, implicit_vr=False, little_endian=False)
    ds = base_dataset(arr)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save("Deflated Explicit VR Little Endian", ds)
    for name, syntax in (
        ("RLE Lossless", RLELossless),
        ("JPEG-LS Lossless", JPEGLSLossless),
        ("JPEG 2000 Lossless", JPEG2000Lossless),
    ):
        ds = base_dataset(arr)
        ds.compress(syntax)
        save(name, ds)
    ds = base_dataset(arr)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([encode_jpeg_lossless(arr)])
    ds["PixelData"].VR = "OB"
    save("JPEG Lossless SV1 (process 14)", ds)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--out", type=Path, help="keep the files here (default: a temp folder)")
    args = ap.parse_args()
    arr = radiograph(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        files = write_all(arr, out)
        load_for_cache(files["Explicit VR Little Endian"], 224)  # imports, first-call costs
        raw = arr.nbytes
        print(machine_line(pydicom=pydicom.__version__))
        print(f"image: {args.size} x {args.size}, 16 bits stored; median of {args.repeats}")
        print("| transfer syntax | file MB | ratio | pixel_array s | load_for_cache(224) s |")
        print("|---|---:|---:|---:|---:|")
        for name, path in files.items():
            decoded = pydicom.dcmread(path).pixel_array
            if not np.array_equal(decoded, arr):
                raise SystemExit(f"{name}: the decoded pixels differ from the original")
            t_pixels = median_time(lambda p=path: pydicom.dcmread(p).pixel_array, args.repeats)
            t_cxr = median_time(lambda p=path: load_for_cache(p, 224), args.repeats)
            size = path.stat().st_size
            print(
                f"| {name} | {size / 1e6:.1f} | {raw / size:.2f} | {t_pixels:.3f} | {t_cxr:.3f} |"
            )


if __name__ == "__main__":
    main()
