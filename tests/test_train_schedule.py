"""Learning-rate schedules and the weight EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxr.training.ema import ModelEMA
from cxr.training.schedule import LRSchedule


def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine_to_zero():
    opt = _opt(0.1)
    s = LRSchedule(opt, "cosine", total_steps=10, warmup_steps=4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[7] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_plateau_cuts_the_rate_after_patience():
    opt = _opt(1.0)
    s = LRSchedule(opt, "plateau", total_steps=100, patience=1, factor=0.5)
    for metric in (0.7, 0.8, 0.8, 0.79):
        s.epoch_end(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    s.epoch_end(0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_state_round_trip():
    opt = _opt(1.0)
    s = LRSchedule(opt, "plateau", total_steps=50, warmup_steps=3, patience=0)
    for _ in range(5):
        s.step()
    s.epoch_end(0.5), s.epoch_end(0.4)
    opt2 = _opt(1.0)
    s2 = LRSchedule(opt2, "plateau", total_steps=50, warmup_steps=3, patience=0)
    s2.load_state_dict(s.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == 0.1


def test_ema_follows_the_formula_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * before + 0.1 * (before + 1.0))
    assert int(ema.module[1].num_batches_tracked) == 5
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, 1.0)
