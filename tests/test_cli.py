import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.cli import main

NIH_SAMPLE_POSITIVES = {
    "Infiltration": 91,
    "Nodule": 63,
    "Atelectasis": 61,
    "Consolidation": 59,
    "Effusion": 57,
    "Mass": 48,
    "Pleural_Thickening": 44,
    "Fibrosis": 32,
    "Pneumothorax": 29,
    "Cardiomegaly": 28,
    "Emphysema": 28,
    "Pneumonia": 24,
    "Edema": 13,
    "Hernia": 13,
}


@pytest.fixture
def course_csv(tmp_path):
    """A plain-CSV dataset in the course-material layout: 12 images of 6 patients."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(12):
        name = f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(
            tmp_path / "images" / name
        )
        rows.append(
            {"Image": name, "Mass": i % 2, "Effusion": (i // 2) % 2, "PatientId": f"p{i // 2}"}
        )
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_inspect_nih_sample_shows_the_readme_counts(shared_datasets, capsys):
    assert main(["data", "inspect", str(shared_datasets / "nih14-sample"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 423 and report["n_patients"] == 423
    positives = {name: row["positive"] for name, row in report["labels"].items()}
    assert positives == NIH_SAMPLE_POSITIVES


def test_inspect_text(course_csv, capsys):
    assert main(["data", "inspect", str(course_csv)]) == 0
    out = capsys.readouterr().out
    assert "images:   12" in out and "patients: 6" in out
    assert "Mass" in out and "Effusion" in out


def test_split_then_check_leakage(course_csv, tmp_path, capsys):
    out = tmp_path / "split"
    assert (
        main(
            [
                "data",
                "split",
                str(course_csv),
                "--out",
                str(out),
                "--fractions",
                "train=0.5,val=0.25,test=0.25",
            ]
        )
        == 0
    )
    files = [str(out / f"{n}.csv") for n in ("train", "val", "test")]
    assert main(["data", "check-leakage", *files]) == 0
    assert "No patient leakage" in capsys.readouterr().out
    # plant a leak: one test image goes into train as well
    train, test = pd.read_csv(files[0]), pd.read_csv(files[2])
    pd.concat([train, test.iloc[:1]]).to_csv(files[0], index=False)
    assert main(["data", "check-leakage", *files]) == 1
    assert "1 patient" in capsys.readouterr().out
    # one file with a split column
    assert main(["data", "check-leakage", str(out / "split.csv")]) == 0


def test_prepare_and_strict(course_csv, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "prepare",
                str(course_csv),
                "--size",
                "32",
                "--out",
                str(cache),
                "--workers",
                "1",
                "--no-progress",
                "--strict",
            ]
        )
        == 0
    )
    assert "stored: 12" in capsys.readouterr().out
    (course_csv.parent / "images" / "im03.png").write_bytes(b"")
    args = [
        "prepare",
        str(course_csv),
        "--size",
        "32",
        "--out",
        str(cache),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0  # the emptied file is decoded again and rejected
    out = capsys.readouterr().out
    assert "rejected: 1" in out and "im03.png: empty" in out
    assert main(args + ["--strict"]) == 1


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(tmp_path / "nope") in err and "Traceback" not in err
    assert (
        main(
            [
                "data",
                "split",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path),
                "--fractions",
                "train",
            ]
        )
        == 2
    )
    assert main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]) == 2


def test_option_for_another_format_is_refused(course_csv, capsys):
    assert main(["data", "inspect", str(course_csv), "--uncertain", "zeros"]) == 2
    assert "uncertain" in capsys.readouterr().err


def test_console_script_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "cxr.cli", "prepare", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--size" in out and "--strict" in out and "resum" in out.lower()


def test_building_the_parser_does_not_import_torch():
    """`cxr --help` and argument errors stay quick: torch is imported by the commands only."""
    import subprocess
    import sys

    code = "import sys, cxr.cli; cxr.cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
