"""Cold start of reading a cxr ONNX file's header: cxr's protobuf walker against the ``onnx``
package's parser (issue 25 asked to prefer the package unless a measured figure says it costs
too much).

Usage (from the repository root, about a minute on an idle 2-core CPU):
    python bench/onnx_header_read.py [--repeat 10] [--backbones cxr-small-cnn densenet121]

For each backbone: a random-initialised model is exported once with ``cxr.export.export_onnx``
(under --work-dir), then fresh processes, alternating A B A B ... --repeat times, each read
and verify that file's header:
  walker   ``cxr.modelformat.onnx_metadata.read_onnx_info`` (what ``cxr predict model.onnx``
           and the ONNX Runtime backend run before ONNX Runtime sees the graph);
  onnx     ``import onnx``, ``onnx.ModelProto.FromString`` on the file's bytes, the metadata
           entries read from the parsed model, and the SHA-256 of the bytes (the seal check
           needs the raw bytes either way).
  python   ``python -c pass``: the interpreter alone, the floor under both.
Wall seconds per process (median, min, max) and the machine load are printed as Markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import command_times, load_average, machine_line, markdown

WALKER = (
    "import sys\n"
    "from cxr.modelformat.onnx_metadata import read_onnx_info\n"
    "info = read_onnx_info(sys.argv[1])\n"
    "assert info.spec.labels\n"
)
ONNX = (
    "import hashlib, json, sys\n"
    "import onnx\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "model = onnx.ModelProto.FromString(raw)\n"
    "meta = {p.key: p.value for p in model.metadata_props}\n"
    "assert json.loads(meta['cxr'])\n"
    "hashlib.sha256(raw).hexdigest()\n"
)


def export(backbone: str, folder: Path) -> Path:
    """A random-initialised ``backbone`` (4 labels, 224 px) saved and exported to ONNX."""
    import torch

    from cxr.export import export_onnx
    from cxr.modelfile import save_model
    from cxr.models import build_model
    from cxr.models.spec import ModelSpec
    from cxr.preprocessing import Preprocessing

    out = folder / f"{backbone}.onnx"
    if out.exists():
        return out
    torch.manual_seed(0)
    labels = ("Atelectasis", "Effusion", "Nodule", "Pneumothorax")
    spec = ModelSpec(labels=labels, backbone=backbone, preprocessing=Preprocessing(size=224))
    model = build_model(spec).eval()
    path = save_model(folder / f"{backbone}.safetensors", model)
    export_onnx(path, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--backbones", nargs="+", default=["cxr-small-cnn", "densenet121"])
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "cxr-onnx-hdr")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"load before: {load_average()}")
    rows = []
    for backbone in args.backbones:
        path = export(backbone, args.work_dir)
        times: dict[str, list[float]] = {"python": [], "walker": [], "onnx": []}
        for _ in range(args.repeat):
            for name, code in (("python", None), ("walker", WALKER), ("onnx", ONNX)):
                times[name].append(
                    float(command_times([sys.executable, "-c", code or "pass", str(path)], 1)[0])
                )
        mb = path.stat().st_size / 2**20
        for name, values in times.items():
            t = np.array(values)
            rows.append(
                [backbone, f"{mb:.1f}", name]
                + [f"{v:.2f}" for v in (np.median(t), t.min(), t.max())]
            )
        ratio = np.median(times["onnx"]) / np.median(times["walker"])
        print(f"{backbone}: onnx / walker (medians) = {ratio:.2f}")
    print(f"load after: {load_average()}")
    print(markdown(["model", "MB", "reader", "median s", "min s", "max s"], rows))


if __name__ == "__main__":
    main()
