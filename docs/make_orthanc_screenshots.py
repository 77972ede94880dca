"""Make the README's Orthanc screenshots (issue 27): a PACS sends a chest X-ray to cxr's
DICOM node and Orthanc Explorer shows the SR and the Secondary Capture that came back.

A recipe, not a test. It starts, on loopback ports in a temporary folder:

1. an Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, as the tests start it:
   tests/orthanc_server.py) that knows the node as the modality ``cxr``;
2. a :class:`cxr.dicomnode.DicomNode` (AE title ``CXR``) that accepts Orthanc and sends its
   results back to it by C-STORE;

uploads one DX image to Orthanc, has Orthanc send it to the node (``POST
/modalities/cxr/store``), waits for the SR and the SC in the study, then opens Orthanc
Explorer in headless Chromium (Playwright) and saves three PNGs (about 1200 px wide, each
under 400 KB) into ``docs/``:

- ``orthanc-study.png``: the study page with its three series (the DX, the SR, the SC);
- ``orthanc-sc.png``: the SC instance's "Preview the instance" (Orthanc's own rendering);
- ``orthanc-sr.png``: the SR instance's DICOM tags from the Content Sequence on (below the
  page's title bar), opened at the measurement group of the most probable finding
  (``--groups N``: the N most probable): its name (Tracking Identifier), Probability,
  Threshold Value and Present/Absent, and at the summary (the headline); the rest closed.

The model: ``--model PATH``; else ``cxr-demo/run/best.safetensors`` when ``cxr demo`` has
run in the repository root; else ``cxr demo`` runs first into the work folder (phantoms,
the small CNN; about 1.5 minutes on two CPU cores). The image: a phantom rendered with
Effusion and Cardiomegaly at ``--size`` pixels (seed ``--seed``), or ``--image PATH``, an
8-bit gray PNG (e.g. one of ``../shared/datasets/nih14-sample/images``) written as a DX.

    nice -n 10 .venv/bin/python docs/make_orthanc_screenshots.py [--model M] [--work DIR]

Needs Orthanc (``make orthanc``), Chromium (``/usr/bin/chromium`` or ``$CXR_CHROMIUM``) and
Playwright. Research use only: cxr is not a medical device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc helpers and the DX writer of the tests

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cxr.dicomnode import DicomNode, NodeConfig  # noqa: E402
from dicomout_files import source_dx  # noqa: E402
from orthanc_server import ORTHANC_AET, Modality, Orthanc, free_port  # noqa: E402

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Width (pixels) of the saved PNGs, and the largest file the repository takes.
WIDTH, MAX_BYTES = 1200, 400_000
STUDY_UID = "1.2.826.0.1.3680043.8.498.27.2"
FINDINGS = ["Effusion", "Cardiomegaly"]
WAIT_S = 180.0


@dataclass(frozen=True)
class Study:
    """Orthanc's IDs of the study and of its three instances (source, SR, SC)."""

    study: str
    source: str
    sr: str
    sc: str


# the model and the image -----------------------------------------------------------------
def find_model(model: Path | None, work: Path) -> Path:
    """``model``, else the demo's best model in the repository root, else a new demo run
    into ``work/demo`` (kept there: a second run with the same ``--work`` reuses it)."""
    if model is not None:
        return model
    for demo in (ROOT / "cxr-demo", work / "demo"):
        if (demo / "run" / "best.safetensors").is_file():
            return demo / "run" / "best.safetensors"
    from cxr.demo import run_demo

    print(f"no model given: running the phantom demo into {work / 'demo'} (about 1.5 min)")
    written = run_demo(work / "demo", workers=1)
    return Path(written["model"])


def gray_image(image: Path | None, size: int, seed: int) -> np.ndarray:
    """The picture as uint8 (H, W): ``image`` (any file Pillow reads, made gray) or a
    phantom with :data:`FINDINGS` of ``size`` pixels."""
    if image is not None:
        return np.asarray(Image.open(image).convert("L"), dtype=np.uint8)
    from cxr.synth.render import render_phantom

    picture, _ = render_phantom(np.random.default_rng(seed), size, FINDINGS)
    return np.asarray(picture, dtype=np.uint8)


def write_dx(gray: np.ndarray, path: Path, image: Path | None) -> Path:
    """``gray`` as a DX for presentation (uint16, 12 bits stored), as a modality sends it."""
    uid = STUDY_UID
    ds = source_dx(sop_uid=f"{uid}.1.1", size=8)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, f"{uid}.1"
    ds.StudyDescription = "Chest PA (cxr README example)"
    ds.SeriesDescription = f"Chest X-ray {image.name}"[:64] if image else "Chest phantom"
    ds.InstanceNumber = 1
    if image is not None:
        ds.PatientName, ds.PatientID = "Chest^Example", image.stem[:16]
    ds.Rows, ds.Columns = gray.shape
    ds.PixelData = (gray.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# the PACS and the node -------------------------------------------------------------------
def send_and_wait(pacs: Orthanc, dx: Path, model: Path, spool: Path) -> Study:
    """Upload ``dx``, have Orthanc send it to a node running ``model``; the study's IDs
    once the SR and the SC are in Orthanc."""
    answer = pacs.upload(dx)
    source, study = str(answer["ID"]), str(answer["ParentStudy"])
    port = next(m.port for m in pacs.modalities if m.name == "cxr")
    config = NodeConfig(
        model=model,
        spool=spool,
        send_to=pacs.send_to,
        port=port,
        allow_aets=(ORTHANC_AET,),
        top_k=3,
        retry_delay=0.5,
        retry_max_delay=2.0,
    )
    with DicomNode(config) as node:
        stored = pacs.store("cxr", [source])
        if stored.get("FailedInstancesCount"):
            raise RuntimeError(f"Orthanc could not send the image to the node: {stored}")
        instances = pacs.wait_for_instances(study, 3, timeout=WAIT_S)
        node.wait_idle(WAIT_S)
    classes = {
        i["ID"]: pacs.get_json(f"/instances/{i['ID']}/simplified-tags")["SOPClassUID"]
        for i in instances
    }
    by_class = {c: i for i, c in classes.items()}
    if SR_CLASS not in by_class or SC_CLASS not in by_class:
        raise RuntimeError(f"no SR and SC in the study after {WAIT_S:.0f} s:\n{pacs.log_tail()}")
    return Study(study, source, by_class[SR_CLASS], by_class[SC_CLASS])


# the screenshots --------------------------------------------------------------------------
def chromium() -> str:
    for candidate in (os.environ.get("CXR_CHROMIUM"), shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    raise SystemExit("Chromium is needed: apt-get install chromium, or set $CXR_CHROMIUM")


#: JavaScript, given the number of groups to open: opens the SR's Content Sequence (a jqTree
#: in Orthanc Explorer) down to what a reader needs, leaving the rest closed: the measurement
#: groups of the most probable findings (tracking identifier = the label, probability,
#: threshold, present/absent; an image the gate flagged has the gate's group only) and the
#: summary (the headline). Returns the labels opened.
OPEN_SR_TREE = r"""
(wanted) => {
  const tree = $('#dicom-tree');
  const text = n => $('<div>').html(n.name).text();
  const child = (n, t) => n && (n.children || []).find(c => text(c).startsWith(t));
  const value = (n, t) => {
    const c = child(n, t);
    return c ? text(c).split(': ').slice(1).join(': ') : '';
  };
  const open = n => { if (n) tree.tree('openNode', n, false); };
  const item = n => n && n.children && n.children[0];
  const meaning = i => value(item(child(i, '0040,a043')), '0008,0104');
  const inner = i => child(i, '0040,a730');
  const content = inner(tree.tree('getTree'));
  open(content);
  const containers = {};
  for (const i of content.children) containers[meaning(i)] = i;
  const measurements = containers['Imaging Measurements'];
  const groups = [];
  for (const g of inner(measurements).children) {
    const entries = inner(g).children;
    const find = m => entries.find(e => meaning(e) === m);
    const prob = find('Probability');  // none in the gate's group (not a chest X-ray?)
    const p = prob ? parseFloat(value(item(child(prob, '0040,a300')), '0040,a30a')) : -1;
    groups.push({g, p, label: value(find('Tracking Identifier'), '0040,a160'), find, entries});
  }
  groups.sort((a, b) => b.p - a.p);
  const shown = groups.slice(0, wanted);
  if (shown.length) { open(measurements); open(inner(measurements)); }
  for (const {g, find, entries} of shown) {
    open(g); open(inner(g));
    const decision = e => value(item(child(e, '0040,a168')), '0008,0104');
    const evaluation = entries.find(e => ['Present', 'Absent'].includes(decision(e)));
    const parts = [find('Tracking Identifier'), find('Probability'), find('Threshold Value')];
    for (const e of [...parts, evaluation].filter(Boolean)) {
      open(e);
      for (const seq of ['0040,a043', '0040,a300', '0040,a168']) {
        open(child(e, seq)); open(item(child(e, seq)));
      }
    }
  }
  const summary = containers['Qualitative Evaluations'];
  const headline = summary && inner(summary).children.find(e => meaning(e) === 'Summary');
  if (headline) { open(summary); open(inner(summary)); open(headline); }
  return shown.map(x => x.label);
}
"""


def _box(page: Any, selectors: list[str], margin: int) -> tuple[int, int, int, int]:
    """The page-coordinate box (left, top, right, bottom) around the elements of
    ``selectors`` (each the first match), widened by ``margin`` pixels."""
    box = page.evaluate(
        """(sels) => {
          const r = sels.map(s => document.querySelector(s).getBoundingClientRect());
          const x = f => r.map(b => b[f]);
          return [Math.min(...x('left')), Math.min(...x('top')) + scrollY,
                  Math.max(...x('right')), Math.max(...x('bottom')) + scrollY];
        }""",
        selectors,
    )
    left, top, right, bottom = (round(v) for v in box)
    return max(0, left - margin), max(0, top - margin), right + margin, bottom + margin


def screenshots(pacs: Orthanc, ids: Study, out: Path, groups: int) -> dict[str, Path]:
    """The three PNGs (see the module docstring) in ``out``; name -> path. ``groups``: how
    many measurement groups of the SR to open (the most probable findings)."""
    from playwright.sync_api import sync_playwright

    explorer = f"{pacs.url}/app/explorer.html"
    shots = {name: out / f"orthanc-{name}.png" for name in ("study", "sc", "sr")}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)

        def open_page(fragment: str, ready: str) -> Any:
            page = browser.new_page(viewport={"width": 1440, "height": 960})
            page.goto(f"{explorer}#{fragment}")
            page.wait_for_function(ready)
            page.wait_for_timeout(500)
            return page

        def shoot(page: Any, name: str, *boxes: tuple[int, int, int, int]) -> None:
            """A full-page screenshot cut to ``boxes``, stacked top to bottom."""
            raw = Path(tmp) / f"{name}.png"
            page.screenshot(path=str(raw), full_page=True)
            with Image.open(raw) as img:
                pieces = [
                    img.convert("RGB").crop(
                        (b[0], b[1], min(b[2], img.width), min(b[3], img.height))
                    )
                    for b in boxes
                ]
            gap = 6
            canvas = Image.new(
                "RGB",
                (max(p.width for p in pieces), sum(p.height + gap for p in pieces) - gap),
                (255, 255, 255),
            )
            y = 0
            for piece in pieces:
                canvas.paste(piece, (0, y))
                y += piece.height + gap
            shrink(canvas, shots[name])
            page.close()

        # (a) the study: its three series, cropped below the lists
        page = open_page(f"study?uuid={ids.study}", "() => $('#list-series li a').length >= 3")
        box = _box(page, ["#study [data-role=header]", "#study .ui-grid-a"], 0)
        shoot(page, "study", (0, 0, box[2], box[3] + 16))

        # (b) the SC: "Preview the instance" (Orthanc's /preview PNG in a lightbox)
        page = open_page(f"instance?uuid={ids.sc}", "() => $('#instance-info li').length > 4")
        page.click("#instance-preview")
        page.wait_for_function(
            "() => { const i = document.querySelector('#lbImage');"
            " return i && i.offsetWidth > 100 && i.offsetHeight > 100; }"
        )
        page.wait_for_timeout(800)
        shoot(page, "sc", _box(page, ["#lbCenter", "#lbBottomContainer"], 24))

        # (c) the SR: its Content Sequence, opened at the most probable findings
        page = open_page(f"instance?uuid={ids.sr}", "() => $('#dicom-tree li').length > 10")
        opened = page.evaluate(OPEN_SR_TREE, groups)
        if not opened:
            raise RuntimeError("no measurement group found in the SR's content tree")
        print(f"SR: opened the measurement groups of {', '.join(opened)}")
        page.wait_for_timeout(300)
        tree = _box(page, ["#dicom-tree"], 12)
        content = page.evaluate(
            """() => {
              const text = n => $('<div>').html(n.name).text();
              const root = $('#dicom-tree').tree('getTree');
              const c = root.children.find(n => text(n).startsWith('0040,a730'));
              return c.element.getBoundingClientRect().top + scrollY;
            }"""
        )
        header = _box(page, ["#instance [data-role=header]"], 0)
        # the page's title bar above the Content Sequence (the tags before it left out)
        right = header[2]  # the page's width: the title bar's buttons kept whole
        shoot(page, "sr", (tree[0], 0, right, header[3]), (tree[0], round(content), right, tree[3]))
        browser.close()
    return shots


def shrink(source: Image.Image, target: Path, width: int = WIDTH) -> None:
    """``source`` scaled to ``width`` pixels wide (never enlarged) and saved as a PNG under
    :data:`MAX_BYTES` (a 256-colour palette first, fewer colours if still too large)."""
    img = source.convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    for colours in (256, 128, 64, 32):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            target, optimize=True
        )
        if target.stat().st_size <= MAX_BYTES:
            return
    raise RuntimeError(f"{target} is {target.stat().st_size} bytes even at 32 colours")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: the phantom demo's)")
    parser.add_argument("--image", type=Path, help="a gray PNG to send (default: a phantom)")
    parser.add_argument("--size", type=int, default=384, help="phantom side in pixels")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    parser.add_argument("--groups", type=int, default=1, help="SR findings to open")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of the PNGs")
    parser.add_argument("--work", type=Path, help="work folder, kept (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-orthanc-shots-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = find_model(args.model, work)
        dx = write_dx(gray_image(args.image, args.size, args.seed), work / "dx.dcm", args.image)
        pacs_dir, spool = work / "pacs", work / "spool"
        for folder in (pacs_dir, spool):
            shutil.rmtree(folder, ignore_errors=True)
        with Orthanc(pacs_dir, [Modality("cxr", "CXR", free_port())]) as pacs:
            ids = send_and_wait(pacs, dx, model, spool)
            print(f"model {model}; Orthanc study {ids.study}: source, SR and SC")
            args.out.mkdir(parents=True, exist_ok=True)
            for name, path in screenshots(pacs, ids, args.out, args.groups).items():
                print(f"{name}: {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
