"""``cxr tune``: options, one-line errors and a tiny full study."""

from __future__ import annotations

import csv

import pytest

from cxr.cli import build_parser, main
from cxr.cli.train import config_from_args
from cxr.training import TrainConfig


@pytest.fixture(scope="module")
def caches(phantom_caches_300):
    return phantom_caches_300


def _base_args(caches, out) -> list[str]:
    return [
        "tune", str(caches["train"]), str(caches["val"]), "--out", str(out),
        "--backbone", "cxr-small-cnn", "--phase1-epochs", "0", "--phase2-epochs", "1",
        "--batch-size", "32", "--calibration", "none", "--device", "cpu",
    ]  # fmt: skip


def test_help_lists_the_search_and_training_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tune", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flags = "--trials --out --space --storage --study --timeout --pruner --force-config --mlflow"
    for flag in [*flags.split(), "--config", "--phase2-lr", "--augment-rotate"]:
        assert flag in text, flag


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr tune: error: ") and "\n" not in err, err
    return err


def test_bad_arguments_give_one_line_errors(caches, tmp_path, capsys):
    assert "give TRAIN_CACHE and VAL_CACHE" in _error(capsys, ["tune", "--trials", "2"])
    err = _error(capsys, ["tune", str(tmp_path), str(tmp_path), "--trials", "2", "--out", "o"])
    assert f"TRAIN_CACHE {tmp_path} is not a prepared cache" in err
    base = _base_args(caches, tmp_path / "out")
    assert "give --trials N" in _error(capsys, base)
    assert "--trials must be at least 1, got 0" in _error(capsys, [*base, "--trials", "0"])
    assert "--timeout must be a positive" in _error(
        capsys, [*base, "--trials", "1", "--timeout", "0"]
    )
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  phase2_lr: {low: 0.1, high: 0.001}\n")
    err = _error(capsys, [*base, "--trials", "1", "--space", str(space)])
    assert f"{space}: params.phase2_lr: low 0.1 is above high 0.001" in err
    err = _error(capsys, [*base, "--trials", "1", "--storage", "redis://localhost/0"])
    assert "storage redis://localhost/0: not a database URL" in err
    err = _error(
        capsys, [*base, "--trials", "1", "--storage", "postgresql://u:secret@127.0.0.1:1/x"]
    )
    assert "cannot open the database" in err and "secret" not in err
    err = _error(capsys, [*base, "--trials", "1", "--phase2-lr", "-1"])
    assert "phase2_lr" in err


def test_a_tiny_study_writes_a_config_cxr_train_accepts(caches, tmp_path, capsys):
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("replace: true\nparams:\n  phase2_lr: {low: 1e-3, high: 1e-2, log: true}\n")
    argv = [*_base_args(caches, out), "--trials", "2", "--space", str(space), "--pruner", "none"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trial 0 complete: " in printed and "trial 1 complete: " in printed
    assert f"best settings: {out / 'best_config.yaml'}" in printed
    best = TrainConfig.load(out / "best_config.yaml")
    args = build_parser().parse_args(["train", "--config", str(out / "best_config.yaml")])
    assert config_from_args(args) == best and best.backbone == "cxr-small-cnn"
    assert 1e-3 <= best.phase2_lr <= 1e-2 and best.phase2_epochs == 1
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1"] and all(r["value"] for r in rows)
    for name in ("optimisation_history.png", "param_importances.png"):
        assert (out / name).stat().st_size > 5000
    # the same command again: the study is complete; another base config is refused
    assert main(argv) == 0
    assert " complete: " not in capsys.readouterr().out  # no trial ran
    err = _error(capsys, [*argv, "--seed", "7"])
    assert "seed 0 -> 7" in err and "--force-config" in err
