"""cxr.training.startup: what a run settles before its first step."""

from __future__ import annotations

import pytest
import torch

from cxr.cache import PreparedCache
from cxr.training import TrainConfig, TrainError
from cxr.training import distributed as dd
from cxr.training.startup import (
    cache_batches,
    default_callbacks,
    label_index,
    load_state,
    open_cache,
    plan_line,
)
from cxr.training.tensorboard import TensorBoardCallback, tensorboard_available


@pytest.fixture(scope="module")
def caches(phantom_caches_small):
    return open_cache(phantom_caches_small["train"]), open_cache(phantom_caches_small["val"])


def test_open_cache_takes_a_folder_or_a_cache(caches):
    train_c, _ = caches
    assert open_cache(train_c) is train_c and isinstance(train_c, PreparedCache)


def test_label_index_maps_the_learned_labels_into_each_cache(caches):
    train_c, val_c = caches
    names = train_c.table.pathologies
    last = names[-1]
    got = label_index(TrainConfig(labels=(last,)), train_c, val_c)
    assert got == ((last,), [names.index(last)], [val_c.table.pathologies.index(last)])
    with pytest.raises(TrainError, match="lacks label"):
        label_index(TrainConfig(labels=("Nothing",)), train_c, val_c)


def test_training_and_validation_batches(caches):
    train_c, val_c = caches
    info = dd.Dist()
    config = TrainConfig(batch_size=8, val_batch_size=16, seed=5, loader_threads=2)
    train_b = cache_batches(config, train_c, info, [0], training=True)
    val_b = cache_batches(config, val_c, info, [0], training=False)
    assert (train_b.batch_size, train_b.shuffle, train_b.drop_last) == (8, True, True)
    assert (train_b.seed, train_b.prefetch) == (5, 4)
    assert (val_b.batch_size, val_b.shuffle, val_b.drop_last, val_b.prefetch) == (
        16,
        False,
        False,
        2,
    )
    assert sum(len(x) for x, _ in val_b) == len(val_c)


def test_tensorboard_is_added_once_when_installed():
    out = default_callbacks([lambda event, info: None])
    assert any(isinstance(c, TensorBoardCallback) for c in out) is tensorboard_available()
    mine = TensorBoardCallback()
    assert [c for c in default_callbacks([mine]) if isinstance(c, TensorBoardCallback)] == [mine]


def test_load_state_refuses_pickles_other_versions_and_other_world_sizes(tmp_path):
    info = dd.Dist()
    torch.save({"code": object}, tmp_path / "state.pt")
    with pytest.raises(TrainError, match="never unpickles"):
        load_state(tmp_path, info)
    torch.save({"version": -1, "world_size": 1}, tmp_path / "state.pt")
    with pytest.raises(TrainError, match="another cxr version"):
        load_state(tmp_path, info)
    from cxr.training.records import STATE_VERSION

    torch.save({"version": STATE_VERSION, "world_size": 2}, tmp_path / "state.pt")
    with pytest.raises(TrainError, match="with 2 processes"):
        load_state(tmp_path, info)
    torch.save({"version": STATE_VERSION, "world_size": 1}, tmp_path / "state.pt")
    assert load_state(tmp_path, info)["world_size"] == 1


def test_plan_line_says_what_the_run_will_do(caches, tmp_path):
    train_c, val_c = caches
    config = TrainConfig(phase1_epochs=1, phase2_epochs=2, backbone="densenet121", pretrained=None)
    line = plan_line(config, dd.Dist(), ("Mass",), train_c, val_c, tmp_path, 0)
    assert line.startswith("training ") and f"{len(train_c)} training" in line
    assert "pretrained weights: none (random initialisation)" in line
    assert f"epochs 1 to 3 into {tmp_path}" in line
