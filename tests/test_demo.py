"""``cxr demo``: the whole pipeline runs, with its defaults, and writes what it says it wrote."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from cxr import RESEARCH_NOTICE
from cxr.cache import PreparedCache
from cxr.demo import EXPLAINED, run_demo
from cxr.leakage import find_leakage
from cxr.modelfile import load_model
from cxr.table import LabelTable


def headlines(text: str) -> int:
    """How many image headlines (cxr.thresholds.headline) a text report holds."""
    starts = r"^  (At or above threshold: |No finding at or above|No thresholds)"
    return len(re.findall(starts, text, re.M))


def _decodes(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines: list[str] = []
    out = tmp_path_factory.mktemp("demo") / "demo"
    written = run_demo(out, echo=lines.append)  # the defaults: what `cxr demo` runs
    return out, written, lines


def test_demo_splits_without_leakage_and_prepares_caches(demo):
    out, written, lines = demo
    assert lines[0] == RESEARCH_NOTICE
    for name in ("train", "val", "test"):
        cache = PreparedCache(written[f"cache_{name}"])
        split = LabelTable.read_csv(written[name])
        assert cache.size == 64
        assert sorted(cache.table.paths) == sorted(split.paths)
    parts = {n: PreparedCache(written[f"cache_{n}"]).table for n in ("train", "val", "test")}
    assert sum(len(t) for t in parts.values()) == 1000
    assert not find_leakage(parts).leaked


def test_demo_trains_a_model_and_reports_an_auc_per_label(demo):
    out, written, lines = demo
    model = load_model(written["model"])
    labels = model.spec.labels
    assert set(model.thresholds) == set(labels)  # chosen on validation, stored in the file
    report = json.loads((out / "report" / "report.json").read_text())
    aucs = {row["label"]: row["auc"] for row in report["labels"]}
    assert set(aucs) == set(labels)
    assert all(a is not None and 0.5 < a <= 1.0 for a in aucs.values()), aucs
    assert report["summary"]["macro_auc"] >= 0.9
    html = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and RESEARCH_NOTICE in html
    for name in ["roc_all", "pr_all"] + [f"roc_{n}" for n in labels]:
        assert _decodes(out / "report" / f"{name}.png")[0] > 100
    summary = json.loads(written["summary"].read_text())
    assert summary["figures"]["test_macro_auc"] == pytest.approx(
        report["summary"]["macro_auc"], abs=1e-4
    )


def test_demo_predicts_and_explains_held_out_images(demo):
    out, written, lines = demo
    text = written["predictions"].read_text()
    # each image has its table, or (a false alarm of the gate, ~5% of phantoms) the warning
    flagged = text.count("NOT A CHEST X-RAY?")
    assert headlines(text) + flagged == EXPLAINED and flagged <= 1
    assert RESEARCH_NOTICE in text and "heldout" in text
    pngs = sorted(written["explain"].glob("*.png"))
    assert len(pngs) == 2 * EXPLAINED
    labels = load_model(written["model"]).spec.labels
    for png in pngs:
        w, h = _decodes(png)
        assert w > h > 100  # image beside overlay
        assert png.stem.split("_")[-1] in labels
    loc = json.loads(written["localization_json"].read_text())
    tolerant = {k: v["pointing_game_tolerant"] for k, v in loc["per_label"].items()}
    assert set(tolerant) == set(labels)
    assert sum(v >= 0.8 for v in tolerant.values()) >= len(labels) - 1, tolerant
    assert any(str(written["report"]) in line for line in lines)
    page = written["dataset_report"].read_text()  # the visual dataset report, with the split
    assert "Prevalence per split" in page and "Sample images per label" in page
    assert any(str(written["dataset_report"]) in line for line in lines)


def test_demo_on_a_dataset(tmp_path):
    """``--data``: the same steps on a given dataset (here phantoms written beforehand)."""
    from cxr.synth import SynthConfig, generate_phantoms

    generate_phantoms(tmp_path / "mine", SynthConfig(n_images=80, size=64, seed=5), workers=1)
    lines: list[str] = []
    written = run_demo(
        tmp_path / "out", data=tmp_path / "mine", size=32, epochs=1, workers=1, echo=lines.append
    )
    assert "phantoms" not in written and "heldout" not in written
    assert str(tmp_path / "mine") in lines[1]
    # cxr train's size-based default: a small set gets the probe on a pretrained backbone
    chosen = [ln for ln in lines if ln.startswith("default chosen by the data")]
    assert len(chosen) == 1 and "recipe probe" in chosen[0], lines
    assert headlines(written["predictions"].read_text()) >= 1
    assert json.loads((tmp_path / "out" / "report" / "report.json").read_text())["labels"]
    assert (
        json.loads(written["localization_json"].read_text())["settings"]["source_kind"]
        == "phantoms"
    )


def test_cli_demo_refuses_missing_data(tmp_path, capsys):
    from cxr.cli import main

    assert main(["demo", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "none does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_on_the_nih_sample_finds_its_boxes(shared_datasets, tmp_path):
    lines: list[str] = []
    written = run_demo(
        tmp_path / "nih",
        data=shared_datasets / "nih14-sample",
        size=32,
        epochs=1,
        echo=lines.append,
    )
    loc = json.loads(written["localization_json"].read_text())
    assert loc["settings"]["source_kind"] == "NIH boxes"
    assert sum(v["n"] for v in loc["per_label"].values()) > 0
    assert np.isfinite(json.loads(written["summary"].read_text())["figures"]["val_macro_auc"])
