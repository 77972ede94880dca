"""cxr.training.tensorboard: the TensorBoard callback lives in training (which never imports
tracking); cxr.tracking re-exports the same class."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.training import TrainConfig
from cxr.training.callbacks import RunStart, TrainingCallback
from cxr.training.tensorboard import TensorBoardCallback, tensorboard_available


def test_tracking_reexports_the_same_callback():
    from cxr.tracking import TensorBoardCallback as from_tracking
    from cxr.tracking import tensorboard_available as available

    assert from_tracking is TensorBoardCallback and available is tensorboard_available
    assert issubclass(TensorBoardCallback, TrainingCallback)


def test_availability_follows_the_installed_package():
    assert tensorboard_available() is (importlib.util.find_spec("tensorboard") is not None)


def test_training_imports_no_tracking_module():
    code = (
        "import sys, cxr.training.loop, cxr.training.startup, cxr.training.tensorboard; "
        "bad = [m for m in sys.modules if m.startswith('cxr.tracking')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_is_written_before_start_or_on_other_ranks(tmp_path):
    cb = TensorBoardCallback(tmp_path / "tb")
    cb.on_epoch({"epoch": 1, "train_loss": 0.5})  # before on_start: ignored
    cb.on_start(RunStart(tmp_path, TrainConfig(), ("Mass",), 10, 5, "cpu", is_main=False))
    cb.on_epoch({"epoch": 1, "train_loss": 0.5})
    cb.on_end(None)
    assert cb.writer is None and not (tmp_path / "tb").exists()


def test_scalars_go_to_the_run_folder_by_default(tmp_path):
    pytest.importorskip("tensorboard")
    cb = TensorBoardCallback()
    cb.on_start(RunStart(tmp_path, TrainConfig(), ("Mass",), 10, 5, "cpu"))
    cb.on_epoch({"epoch": 1, "train_loss": 0.5, "phase": 1, "note": "text is skipped"})
    cb.on_end(None)
    assert cb.writer is None
    assert list(Path(tmp_path / "tensorboard").glob("events.out.tfevents.*"))
