"""Learning-rate schedules with linear warm-up: cosine decay, reduce-on-plateau, constant.

:class:`LRSchedule` scales every parameter group's base learning rate by a factor it
computes from the optimiser step count (warm-up, cosine) and from the validation metric
seen at the end of each epoch (plateau). Its state is a small dict, saved for resume.
"""

from __future__ import annotations

import math

import torch


class LRSchedule:
    """Sets ``lr = base_lr * factor`` on every group of ``optimizer`` after each step.

    Args:
        optimizer: its groups' current ``lr`` are taken as the base rates.
        kind: ``cosine`` (to 0 over ``total_steps``), ``plateau`` (multiply by ``factor``
            after more than ``patience`` epochs without improvement of the metric, which
            is maximised) or ``constant``.
        total_steps: optimiser steps in this phase.
        warmup_steps: steps of linear warm-up from ``1/(warmup_steps+1)`` of the base rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        patience: int = 1,
        factor: float = 0.1,
    ):
        if kind not in ("cosine", "plateau", "constant"):
            raise ValueError(f"unknown schedule {kind!r}; choose cosine, plateau or constant")
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.patience, self.factor = int(patience), float(factor)
        self.base = [float(g["lr"]) for g in optimizer.param_groups]
        self.steps = 0
        self.plateau_scale = 1.0
        self.best = -math.inf
        self.bad_epochs = 0
        self._apply()

    def scale(self) -> float:
        """The factor applied to the base rates now."""
        s = 1.0
        if self.warmup_steps and self.steps < self.warmup_steps:
            s = (self.steps + 1) / (self.warmup_steps + 1)
        if self.kind == "cosine":
            span = self.total_steps - self.warmup_steps
            done = min(max(self.steps - self.warmup_steps, 0), span) / span
            s *= 0.5 * (1.0 + math.cos(math.pi * done))
        elif self.kind == "plateau":
            s *= self.plateau_scale
        return s

    def _apply(self) -> None:
        s = self.scale()
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * s

    def step(self) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        self._apply()

    def epoch_end(self, metric: float) -> None:
        """Call after every validation with the metric to maximise (used by ``plateau``)."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        if metric > self.best + 1e-4:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_scale *= self.factor
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "base": list(self.base),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.base = [float(b) for b in state["base"]]
        self._apply()
