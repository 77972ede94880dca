"""cxr.training.results: what a run leaves and the lines that report it."""

from __future__ import annotations

from pathlib import Path

from cxr.training import TrainConfig, TrainResult, run_summary
from cxr.training.results import interrupted_message


def test_result_names_its_model_files():
    r = TrainResult(Path("runs/a"), 0.8, 2, 4)
    assert r.best_model == Path("runs/a/best.safetensors")
    assert r.last_model == Path("runs/a/last.safetensors")
    assert r.history == []


def test_summary_reports_best_epoch_one_based_and_throughput():
    history = [{"images_per_second": 90.0, "images_per_second_steady": 120.0}]
    text = run_summary(TrainResult(Path("r"), 0.81234, 1, 3, history))
    assert "epochs run: 3; best validation macro AUC 0.8123 at epoch 2" in text
    assert "120 images/s in steady state, 90 with the warm-up of 0.0 s" in text
    assert "throughput" not in run_summary(TrainResult(Path("r"), 0.5, 0, 1))


def test_interrupted_message_says_what_was_kept_and_how_to_continue(tmp_path):
    config = TrainConfig(phase1_epochs=1, phase2_epochs=2)
    assert "nothing was saved" in interrupted_message(tmp_path, config, [])
    (tmp_path / "state.pt").write_bytes(b"")
    history = [
        {"epoch": 1, "val_macro_auc": 0.6},
        {"epoch": 2, "val_macro_auc": 0.7},
    ]
    text = interrupted_message(tmp_path, config, history)
    assert f"epochs 1-2 of 3 are saved in {tmp_path}" in text
    assert "0.7000 at epoch 2" in text
    assert text.endswith(f"cxr train --resume {tmp_path}")
