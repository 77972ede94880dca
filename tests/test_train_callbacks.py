"""Training observed through callbacks (cxr.training.callbacks, cxr.tracking)."""

from __future__ import annotations

import pytest

from cxr.tracking import TensorBoardCallback
from cxr.training import TrainConfig, train
from cxr.training.callbacks import FunctionCallback, RunStart, TrainingCallback, as_callbacks


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_start(self, run):
        self.events.append(("start", run))

    def on_step(self, step):
        self.events.append(("step", dict(step)))

    def on_epoch(self, row):
        self.events.append(("epoch", row["epoch"]))

    def on_end(self, result):
        self.events.append(("end", result))


def test_events_arrive_in_order(phantom_caches_small, tmp_path):
    c = phantom_caches_small
    config = TrainConfig(
        backbone="cxr-small-cnn",
        phase1_epochs=0,
        phase2_epochs=2,
        batch_size=64,
        device="cpu",
        seed=0,
    )
    recorder, calls, printed = Recorder(), [], []
    result = train(
        config,
        c["train"],
        c["val"],
        tmp_path / "run",
        progress=False,
        echo=printed.append,
        callbacks=[recorder, lambda e, i: calls.append(e)],
    )
    # what the run is about to do is printed before the first epoch
    labels = recorder.events[0][1].labels
    # the settings left to the data are decided and said first, then the plan
    assert printed[0].startswith("default chosen by the data (recipe, pretrained not given)")
    assert "recipe finetune" in printed[0] and "probe needs pretrained weights" in printed[0]
    assert printed[1].startswith("training cxr-small-cnn on cpu (")
    assert f"{len(labels)} labels ({', '.join(labels)})" in printed[1]
    assert "pretrained weights: none" in printed[1] and str(tmp_path / "run") in printed[1]
    kinds = [k for k, _ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert [v for k, v in recorder.events if k == "epoch"] == [1, 2]
    steps = [v for k, v in recorder.events if k == "step"]
    assert steps[0] == {"epoch": 0, "step": 0} and steps[-1]["epoch"] == 1
    epoch_at = [i for i, (k, _) in enumerate(recorder.events) if k == "epoch"]
    assert all(recorder.events[i - 1][0] == "step" for i in epoch_at)  # after the epoch's steps
    start = recorder.events[0][1]
    assert isinstance(start, RunStart) and start.run_dir == tmp_path / "run"
    assert start.train_images > 0 and start.start_epoch == 0 and start.is_main
    assert start.labels and all(f"val_auc_{n}" in result.history[0] for n in start.labels)
    assert recorder.events[-1][1] is result
    assert calls[0] == "start" and calls[-1] == "end" and calls.count("epoch") == 2


def test_as_callbacks_wraps_functions_and_refuses_others():
    fn_events = []
    wrapped = as_callbacks([lambda e, i: fn_events.append((e, i))])
    assert isinstance(wrapped[0], FunctionCallback)
    wrapped[0].on_epoch({"epoch": 1})
    assert fn_events == [("epoch", {"epoch": 1})]
    with pytest.raises(TypeError, match="TrainingCallback or a function"):
        as_callbacks([42])


def test_tensorboard_callback_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    cb = TensorBoardCallback(tmp_path / "tb")
    cb.on_start(RunStart(tmp_path, TrainConfig(), ("a",), 1, 1, "cpu"))
    cb.on_epoch({"epoch": 1, "train_loss": 0.5, "note": "text is skipped"})
    cb.on_end(None)
    assert any((tmp_path / "tb").iterdir())
