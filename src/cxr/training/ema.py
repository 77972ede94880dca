"""Exponential moving average (EMA) of a model's weights, for evaluation and the saved model."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A shadow copy of ``model`` whose floating-point weights follow ``decay``.

    After each optimiser step, :meth:`update` sets ``w_ema = decay * w_ema + (1 - decay) * w``
    for every floating-point parameter and buffer (integer buffers such as BatchNorm's
    batch counter are copied). ``module`` is the averaged model, always in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (one fused lerp over the
        floating-point tensors, one fused copy of the others)."""
        source = dict(_tensors(model))
        floats_ema, floats_new, others_ema, others_new = [], [], [], []
        for name, value in _tensors(self.module):
            new = source[name]
            if value.is_floating_point():
                floats_ema.append(value)
                floats_new.append(new)
            else:
                others_ema.append(value)
                others_new.append(new)
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - self.decay)
        if others_ema:
            torch._foreach_copy_(others_ema, others_new)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["weights"])


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of what ``model.state_dict()`` holds (parameters and persistent
    buffers, same names), without its hooks and per-tensor ``detach`` (it runs every step)."""
    out: list[tuple[str, torch.Tensor]] = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in module._parameters.items():
            if p is not None:
                out.append((dot + name, p))
        skip = module._non_persistent_buffers_set
        for name, b in module._buffers.items():
            if b is not None and name not in skip:
                out.append((dot + name, b))
    return out
