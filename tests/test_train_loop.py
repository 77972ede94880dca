"""The training loop: phases, learning, resume after a kill, every speed option, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cxr.cache import PreparedCache
from cxr.modelfile import load_model
from cxr.models import HeadConfig, ModelSpec, Preprocessing, build_model
from cxr.training import TrainConfig, TrainError, resume, train

SMALL = TrainConfig(
    backbone="cxr-small-cnn",
    phase1_epochs=1,
    phase2_epochs=2,
    batch_size=16,
    phase1_lr=3e-3,
    phase2_lr=1e-3,
    dropout=0.2,
    ema_decay=0.9,
    seed=3,
)


def _weights(path):
    return {k: v.clone() for k, v in load_model(path).model.state_dict().items()}


def test_default_epochs_grow_on_a_small_training_set(phantom_caches_small, tmp_path):
    """Epochs left to the data: a small cache runs enough epochs for the minimum steps,
    and a resumed run decides the same numbers from its unsized config.yaml."""
    c = phantom_caches_small
    config = SMALL.replace(
        phase1_epochs=None, phase2_epochs=None, phase1_min_steps=0, phase2_min_steps=0,
        batch_size=64, ema_decay=0.0,
    )  # fmt: skip
    steps = len(PreparedCache(c["train"])) // 64
    config = config.replace(phase1_min_steps=3 * steps, phase2_min_steps=9 * steps)
    lines: list[str] = []
    result = train(config, c["train"], c["val"], tmp_path / "run", progress=False,
                   echo=lines.append)  # fmt: skip
    assert [r["phase"] for r in result.history] == [1] * 3 + [2] * 9
    assert any("small training set" in line for line in lines)
    saved = TrainConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.phase1_epochs is None and saved.phase2_epochs is None
    again = resume(tmp_path / "run", progress=False, echo=lambda s: None)
    assert again.epochs_run == 12  # nothing left to do: the same sizing


def test_phase1_keeps_the_backbone_phase2_changes_it(phantom_caches_small, tmp_path):
    config = SMALL.replace(phase2_epochs=1, ema_decay=0.0)
    snapshots = []

    def grab(event, info):
        if event == "epoch":
            snapshots.append(_weights(tmp_path / "run" / "last.safetensors"))

    c = phantom_caches_small
    train(
        config,
        c["train"],
        c["val"],
        tmp_path / "run",
        progress=False,
        echo=lambda s: None,
        callbacks=[grab],
    )
    torch.manual_seed(config.seed)  # the loop builds its model right after seeding
    names = load_model(tmp_path / "run" / "best.safetensors").spec.labels
    init = build_model(
        ModelSpec(
            labels=names,
            backbone="cxr-small-cnn",
            preprocessing=Preprocessing(size=32),
            head=HeadConfig(dropout=0.2),
        )
    ).state_dict()
    after1, after2 = snapshots
    backbone = [k for k in init if k.startswith("backbone.")]
    head = [k for k in init if k.startswith("head.")]
    assert any("running_mean" in k for k in backbone)  # BatchNorm statistics are checked too
    for k in backbone:
        assert torch.equal(after1[k], init[k]), f"{k} changed in phase 1"
    assert any(not torch.equal(after1[k], init[k]) for k in head)
    changed = [k for k in backbone if not torch.equal(after2[k], after1[k])]
    assert len(changed) > len(backbone) // 2


def test_a_small_model_learns_phantoms(trained_phantom_model):
    """The shared phantom model (conftest: small CNN, GeM, 16 epochs, 800 training images
    at 64 px) reaches validation macro AUC >= 0.95."""
    result = trained_phantom_model
    assert len(result.history) == 16
    assert result.best_auc >= 0.95, result.history[result.best_epoch]
    model = load_model(result.best_model)
    assert set(model.thresholds) == set(model.spec.labels)  # chosen on validation
    assert model.spec.fit == "pad"  # the preprocessing record of the model file


_KILL_SCRIPT = """
import os, signal, sys
from cxr.training import TrainConfig, train
config = TrainConfig.load(sys.argv[1])
def kill(event, info):
    if event == "step" and info["epoch"] == 2 and info["step"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
train(config, sys.argv[2], sys.argv[3], sys.argv[4], progress=False, callbacks=[kill])
"""


def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(phantom_caches_small, tmp_path):
    c = phantom_caches_small
    whole = train(
        SMALL, c["train"], c["val"], tmp_path / "whole", progress=False, echo=lambda s: None
    )
    cfg = SMALL.save(tmp_path / "config.yaml")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILL_SCRIPT),
            str(cfg),
            str(c["train"]),
            str(c["val"]),
            str(tmp_path / "cut"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 2  # two epochs were saved; the third was cut short
    lines = []
    resumed = resume(tmp_path / "cut", progress=False, echo=lines.append)
    assert any("resuming" in line and "epoch 3" in line for line in lines)
    a, b = _weights(whole.last_model), _weights(resumed.last_model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_macro_auc"] for r in whole.history] == [
        r["val_macro_auc"] for r in resumed.history
    ]
    assert resumed.best_epoch == whole.best_epoch


def test_densenet121_trains_with_mixed_precision_accumulation_and_channels_last(
    phantom_caches_small, tmp_path
):
    c = phantom_caches_small
    config = TrainConfig(
        backbone="densenet121",
        phase1_epochs=0,
        phase2_epochs=1,
        batch_size=8,
        accumulate=2,
        precision="bf16",
        channels_last=True,
        ema_decay=0.5,
        grad_clip=1.0,
        schedule="plateau",
        optimizer="sgd",
        labels=("Effusion", "Mass"),
    )
    torch.manual_seed(config.seed)
    init = build_model(
        ModelSpec(labels=("Effusion", "Mass"), preprocessing=Preprocessing(size=32))
    ).state_dict()
    result = train(
        config, c["train"], c["val"], tmp_path / "run", progress=False, echo=lambda s: None
    )
    row = result.history[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    after = _weights(result.last_model)
    assert not torch.equal(after["backbone.conv0.weight"], init["backbone.conv0.weight"])
    assert load_model(result.best_model).spec.labels == ("Effusion", "Mass")


def test_errors_say_what_to_do(phantom_caches_small, tmp_path):
    c = phantom_caches_small
    config = SMALL.replace(phase1_epochs=1, phase2_epochs=0)
    train(config, c["train"], c["val"], tmp_path / "run", progress=False, echo=lambda s: None)
    with pytest.raises(TrainError, match="--resume"):
        train(config, c["train"], c["val"], tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="no such run folder"):
        resume(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="no config.yaml"):
        resume(tmp_path / "empty")
    with pytest.raises(TrainError, match="lacks label"):
        train(config.replace(labels=("Hernia",)), c["train"], c["val"], tmp_path / "r2")
    with pytest.raises(TrainError, match="--batch-size"):
        train(config.replace(batch_size=10_000), c["train"], c["val"], tmp_path / "r3")


def test_two_processes_with_gloo_train_one_model(phantom_caches_small, tmp_path):
    c = phantom_caches_small
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cxr",
        "train",
        str(c["train"]),
        str(c["val"]),
        "--out",
        str(tmp_path / "ddp"),
        "--backbone",
        "cxr-small-cnn",
        "--phase1-epochs",
        "0",
        "--phase2-epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--no-progress",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    state = torch.load(tmp_path / "ddp" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 2 and len(state["history"]) == 2
    n_train = len(__import__("cxr.cache", fromlist=["x"]).PreparedCache(c["train"]))
    # each rank took its own half of every epoch: steps per epoch = (n // 2) // 16
    assert state["schedule"]["steps"] == 2 * ((n_train // 2) // 16)
    assert np.isfinite(state["history"][-1]["val_macro_auc"])


def test_resume_uses_the_cpu_thread_count_of_the_run(phantom_caches_small, tmp_path):
    """CPU sums depend on the thread count: a resumed run takes the run's own count."""
    c = phantom_caches_small
    config = SMALL.replace(phase1_epochs=0, phase2_epochs=2, ema_decay=0.0)

    def stop_after_first(event, info):
        if event == "epoch":
            raise KeyboardInterrupt

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            train(
                config,
                c["train"],
                c["val"],
                tmp_path / "run",
                progress=False,
                echo=lambda s: None,
                callbacks=[stop_after_first],
            )
        assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["cpu_threads"] == 1
        torch.set_num_threads(2)
        lines: list[str] = []
        resume(tmp_path / "run", progress=False, echo=lines.append)
        assert torch.get_num_threads() == 1
        assert "using 1 CPU threads, as the run did before" in lines
        # an explicit count is honoured, and said to differ from the run's
        (tmp_path / "run" / "config.yaml").write_text(
            (tmp_path / "run" / "config.yaml")
            .read_text()
            .replace("phase2_epochs: 2", "phase2_epochs: 3")
        )
        lines.clear()
        resume(tmp_path / "run", progress=False, echo=lines.append, threads=2)
        assert torch.get_num_threads() == 2
        assert any("using 2 CPU threads as asked; the run used 1" in x for x in lines), lines
    finally:
        torch.set_num_threads(before)


def test_ctrl_c_stops_saves_and_prints_the_resume_command(phantom_caches_small, tmp_path):
    """SIGINT after the first epoch: exit 130 at once, the best model already has its
    thresholds, and the printed command continues the run to its end."""
    import os
    import signal
    import time

    from cxr.modelfile import read_model_info

    c, run = phantom_caches_small, tmp_path / "run"
    SMALL.replace(phase2_epochs=40).save(tmp_path / "config.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "cxr", "train", str(c["train"]), str(c["val"])]
    argv += ["--config", str(tmp_path / "config.yaml"), "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch 1/41"):
            break
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert waited < 30, f"Ctrl-C took {waited:.0f} s to stop the run"
    assert "Traceback" not in err
    assert f"Continue with: cxr train --resume {run}" in err
    assert "epochs 1-" in err and "with thresholds" in err
    info = read_model_info(run / "best.safetensors")
    assert info.thresholds, "the best model of an interrupted run has no thresholds"
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["next_epoch"] >= 1

    # the printed command continues the run (made shorter first, to keep the test quick)
    import shlex

    from cxr.training import TrainConfig as Config

    Config.load(run / "config.yaml").replace(phase2_epochs=state["next_epoch"]).save(
        run / "config.yaml"
    )
    command = shlex.split(err.split("Continue with: ")[1].strip())
    assert command[:3] == ["cxr", "train", "--resume"]
    resumed = subprocess.run(
        [sys.executable, "-m", "cxr", *command[1:], "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "best model:" in resumed.stdout
