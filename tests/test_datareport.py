"""The visual dataset report (cxr.datareport, cxr data report)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cxr.cli import main
from cxr.datareport import dataset_report, label_csvs, render_html, write_dataset_report
from cxr.datareport.stats import cooccurrence, demographics, images_per_patient, labels_per_image
from cxr.datasets import describe, load_dataset
from cxr.table import LabelTable


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from cxr.synth import SynthConfig, generate_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(root, SynthConfig(n_images=60, size=64, seed=2), workers=1, progress=False)
    return root


def small_table(labels, patients=None) -> LabelTable:
    labels = np.asarray(labels, np.float32)
    n = len(labels)
    meta = pd.DataFrame(
        {
            "path": [f"/nowhere/{i}.png" for i in range(n)],
            "patient_id": patients or [f"p{i}" for i in range(n)],
            "view": "PA",
            "split": "",
        }
    )
    return LabelTable(meta, labels, ("A", "B", "C"))


def test_numbers_from_a_small_table():
    nan = np.nan
    t = small_table(
        [[1, 1, 0], [1, 0, nan], [1, 1, 1], [0, 0, 0], [0, 1, nan]],
        patients=["p1", "p1", "p2", "p3", "p3"],
    )
    co = cooccurrence(t)
    assert co.loc["A", "B"] == pytest.approx(2 / 3)  # B present in 2 of the 3 A images
    assert co.loc["A", "C"] == pytest.approx(1 / 2)  # C known in 2 of them, present in 1
    assert co.loc["C", "A"] == 1.0 and co.loc["B", "B"] == 1.0
    assert labels_per_image(t) == {0: 1, 1: 2, 2: 1, 3: 1}
    assert images_per_patient(t) == {1: 1, 2: 2}


def test_the_report_counts_what_inspect_counts(phantoms, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["data", "report", str(phantoms), "--out", str(out)]) == 0
    assert main(["data", "inspect", str(phantoms), "--json"]) == 0
    inspect = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the report line
    report = json.loads((out / "report.json").read_text())
    for key in ("n_images", "n_patients", "labels", "views"):
        assert report[key] == inspect[key], key
    summary = describe(load_dataset(phantoms))
    assert report["labels"] == summary.to_dict()["labels"]


def test_the_page_embeds_every_figure_and_loads_nothing(phantoms, tmp_path):
    report = dataset_report(load_dataset(phantoms), seed=1)
    written = write_dataset_report(report, tmp_path)
    page = written["html"].read_text()
    pngs = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert pngs == sorted(report.figures)
    assert {"label_counts", "cooccurrence", "samples", "image_sizes", "views"} <= set(pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Research use only" in page


def test_the_sample_grid_depends_on_the_seed_only(phantoms):
    table = load_dataset(phantoms)
    first = dataset_report(table, seed=3).grid
    again = dataset_report(table, seed=3).grid
    other = dataset_report(table, seed=4).grid
    assert first is not None and again is not None and other is not None
    assert first.paths() == again.paths()
    assert first.paths() != other.paths()
    for row, items in first.rows.items():
        assert 0 < len(items) <= 4, row
        for _path, pixels, positive in items:
            assert pixels.dtype == np.uint8 and pixels.ndim == 2
            if row != "no finding":
                assert row in positive


def test_splits_are_compared_and_checked_for_leakage(phantoms, tmp_path):
    splits = tmp_path / "splits"
    assert main(["data", "split", str(phantoms), "--out", str(splits)]) == 0
    out = tmp_path / "report"
    assert main(["data", "report", str(phantoms), "--splits", str(splits), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["leakage"] == {"leaked": False, "shared_patients": 0}
    assert list(report["split_prevalence"]) == ["train", "val", "test"]
    # a val file holding a training patient's image is reported as leakage
    train = pd.read_csv(splits / "train.csv")
    pd.concat([pd.read_csv(splits / "val.csv"), train.head(1)]).to_csv(
        splits / "val.csv", index=False
    )
    assert main(["data", "report", str(phantoms), "--splits", str(splits), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["leakage"]["leaked"] is True
    assert 'class="warn">Leakage check' in (out / "report.html").read_text()


def test_merged_sources_show_where_labels_come_from(tmp_path):
    (tmp_path / "a.csv").write_text("image,patient,Effusion,Mass\nx1.png,p1,1,0\nx2.png,p2,0,1\n")
    (tmp_path / "b.csv").write_text("image,patient,Effusion\ny1.png,q1,1\n")
    out = tmp_path / "report"
    assert main(["data", "report", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                 "--out", str(out), "--no-images"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    coverage = report["coverage"]
    b = str(tmp_path / "b.csv")
    assert coverage[b] == {"Effusion": 1.0, "Mass": 0.0}  # b has no Mass: unknown there
    assert report["labels"]["Mass"]["unknown"] == 1
    assert "coverage" in report["figures"] and report["headers"] is None


def test_age_and_sex_come_from_the_label_csv(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "Image Index,Patient ID,Patient Age,Patient Gender,Effusion\n"
        "a.png,1,058Y,M,1\n"
        "b.png,2,6M,F,0\n"
        "c.png,3,,F,0\n"
    )
    table = load_dataset(csv, format="csv", patient_column="Patient ID", labels=["Effusion"])
    found = demographics(table, label_csvs(csv))
    assert found is not None and found["matched"] == 3
    assert found["sex"] == {"M": 1, "F": 2, "unknown": 0}
    np.testing.assert_allclose(found["ages"][:2], [58.0, 0.5])
    assert np.isnan(found["ages"][2])


def test_nih_scale_metadata_without_images(shared_datasets, tmp_path):
    folder = shared_datasets / "nih14-metadata"
    table = load_dataset(folder)
    report = dataset_report(table, csv_paths=label_csvs(folder), seed=0)
    assert report.summary.n_images == 112_120
    assert report.grid is None and any("no images were found" in n for n in report.notes)
    assert report.demographics is not None and report.demographics["matched"] == 112_120
    page = render_html(report)
    assert "no images were found" in page and "image_sizes" not in report.figures


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_page_renders_in_headless_chromium_without_network(phantoms, tmp_path):
    """Fails (never skips) when Chromium or Playwright is missing: `make test` installs them."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    written = write_dataset_report(dataset_report(load_dataset(phantoms)), tmp_path)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(written["html"].as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
        browser.close()
    assert loaded, "an embedded figure did not load"
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=np.float32)
    assert shot.shape[0] > 900 and shot.std() > 20  # a long page with content, not blank
