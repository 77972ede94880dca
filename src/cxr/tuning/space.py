"""The search space of a study: which training settings vary, over which values.

A :class:`SearchSpace` is a tuple of :class:`Param`: a range (``low``..``high``, on a
log scale or in steps), a list of ``choices``, or one fixed ``value`` (set, not searched).
Every name is a :class:`~cxr.training.TrainConfig` field, ``augment.<field>`` for the
augmentation, or one of the head's special names:

- ``hidden_layers``: the number of dense layers before the output layer (an int range);
- ``hidden_width``: the width of each of them, drawn per layer (``hidden_width_1``, ...
  in the trial's parameters, present only when the trial has that many layers).

Integer settings (``batch_size``, ``phase2_min_steps``, ...) are drawn as integers, the
others as floats; text and on/off settings take ``choices`` or a value.

A YAML file (``cxr tune --space FILE``) narrows or replaces the default space::

    replace: false          # true: only the parameters below; false: the default space changed
    params:
      phase2_lr: {low: 1e-5, high: 1e-3, log: true}
      optimizer: {choices: [adamw, sgd]}
      batch_size: 32        # a fixed value: not searched
      hidden_layers: {low: 0, high: 2}
      augment.rotate: {low: 0, high: 10}

Errors name the file, the parameter and what is wrong, in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.choices import POOLS
from cxr.training.config import LOSSES, OPTIMIZERS, ConfigError, TrainConfig, read_yaml
from cxr.tuning.params import (
    HIDDEN_LAYERS,
    HIDDEN_WIDTH,
    SPECIAL,
    Param,
    SpaceError,
    apply_values,
    parse_param,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DEFAULT_SPACE",
    "HIDDEN_LAYERS",
    "HIDDEN_WIDTH",
    "Param",
    "SearchSpace",
    "SpaceError",
    "apply_values",
]

#: Width of a dense layer when the space draws a layer count but no widths and the base
#: config has no layer to copy.
_FALLBACK_WIDTH = 256


#: The default space: optimiser, both learning rates and the head's factor, batch size, the
#: dense head (0-5 layers of 64-512 units), dropout, loss, pooling and the phase lengths
#: (minimum optimiser steps per phase; see TrainConfig.sized).
DEFAULT_SPACE: tuple[Param, ...] = (
    Param("optimizer", choices=tuple(OPTIMIZERS)),
    Param("phase1_lr", low=1e-5, high=1e-1, log=True),
    Param("phase2_lr", low=1e-5, high=1e-1, log=True),
    Param("head_lr_factor", low=1.0, high=30.0, log=True),
    Param("batch_size", choices=(16, 32, 64)),
    Param(HIDDEN_LAYERS, low=0, high=5),
    Param(HIDDEN_WIDTH, low=64, high=512, log=True),
    Param("dropout", choices=(0.1, 0.3, 0.5)),
    Param("loss", choices=tuple(LOSSES)),
    Param("pool", choices=tuple(POOLS)),
    Param("phase1_min_steps", low=0, high=300, step=50),
    Param("phase2_min_steps", low=100, high=2000, log=True),
)

#: Default parameters that do nothing for some base configs: name -> (test, reason).
_INERT: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    "phase1_min_steps": (lambda c: c.phase1_epochs is not None, "phase1_epochs is set"),
    "phase2_min_steps": (lambda c: c.phase2_epochs is not None, "phase2_epochs is set"),
    "phase1_lr": (lambda c: c.phase1_epochs == 0, "phase1_epochs is 0"),
    "phase2_lr": (lambda c: c.phase2_epochs == 0, "phase2_epochs is 0"),
    "head_lr_factor": (lambda c: c.phase2_epochs == 0, "phase2_epochs is 0"),
}


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a study (see the module docstring); ``source`` names where they
    came from (a file, or "the default space") in error messages."""

    params: tuple[Param, ...] = DEFAULT_SPACE
    source: str = "the default space"

    @classmethod
    def default(cls) -> SearchSpace:
        return cls(DEFAULT_SPACE)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a space file (format: see the module docstring)."""
        path = Path(path)
        data = read_yaml(path, SpaceError, "search-space file")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "the search space") -> SearchSpace:
        """A space from ``{"replace": bool, "params": {name: spec}}``."""
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: must hold a mapping with 'params' (and 'replace')")
        unknown = sorted(set(map(str, data)) - {"replace", "params"})
        if unknown:
            raise SpaceError(f"{source}: unknown key(s) {unknown}; known: params, replace")
        replace = data.get("replace", False)
        if not isinstance(replace, bool):
            raise SpaceError(f"{source}: replace must be true or false, got {replace!r}")
        specs = data.get("params") or {}
        if not isinstance(specs, dict):
            raise SpaceError(f"{source}: params must be a mapping of name: range, choices or value")
        given = [parse_param(str(name), spec, source) for name, spec in specs.items()]
        if replace:
            if not given:
                raise SpaceError(f"{source}: replace: true needs at least one parameter")
            return cls(tuple(given), source)
        by_name = {p.name: p for p in DEFAULT_SPACE}
        for p in given:
            by_name[p.name] = p
        return cls(tuple(by_name.values()), source)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``replace: true``: the whole space)."""
        return {"replace": True, "params": {p.name: p.to_dict() for p in self.params}}

    @property
    def searched(self) -> tuple[Param, ...]:
        """The parameters that vary (not fixed)."""
        return tuple(p for p in self.params if not p.fixed)

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)

    def check(self, base: TrainConfig) -> None:
        """Raise SpaceError (naming the source and parameter) when a bound, choice or value
        is no valid setting on top of ``base``."""
        for p in self.params:
            for value in p.candidates():
                if p.name == HIDDEN_LAYERS:
                    ok, why = isinstance(value, int) and value >= 0, "must be 0 or more"
                elif p.name == HIDDEN_WIDTH:
                    ok, why = isinstance(value, int) and value >= 1, "must be 1 or more"
                else:
                    try:
                        apply_values(base, {p.name: value})
                        ok, why = True, ""
                    except (ConfigError, TypeError, ValueError) as err:
                        ok, why = False, " ".join(str(err).split())
                if not ok:
                    raise SpaceError(f"{self.source}: params.{p.name}: {value!r}: {why}")

    def without_inert(self, base: TrainConfig) -> tuple[SearchSpace, list[str]]:
        """This space without the default parameters that ``base`` makes meaningless (e.g.
        phase2_min_steps when phase2_epochs is set), and one note per parameter left out."""
        defaults = {p.name: p for p in DEFAULT_SPACE}
        kept, notes = [], []
        for p in self.params:
            inert = _INERT.get(p.name)
            if inert and defaults.get(p.name) == p and inert[0](base):
                notes.append(f"{p.name} is not searched: {inert[1]}")
            else:
                kept.append(p)
        return dataclasses.replace(self, params=tuple(kept)), notes

    def suggest(self, trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
        """The training settings of ``trial``: ``base`` with this space's values drawn
        (ConfigError names a setting whose drawn value is refused)."""
        values = {p.name: p.draw(trial) for p in self.params if p.name not in SPECIAL}
        hidden = self._hidden(trial, base)
        if hidden is not None:
            values["hidden"] = hidden
        return apply_values(base, values)

    def _hidden(self, trial: optuna.Trial, base: TrainConfig) -> tuple[int, ...] | None:
        by_name = {p.name: p for p in self.params}
        layers_p, width_p = by_name.get(HIDDEN_LAYERS), by_name.get(HIDDEN_WIDTH)
        if layers_p is None and width_p is None:
            return None
        layers = int(layers_p.draw(trial)) if layers_p else len(base.hidden)
        widths = []
        for i in range(layers):
            if width_p is not None:
                widths.append(int(width_p.draw(trial, f"{HIDDEN_WIDTH}_{i + 1}")))
            elif i < len(base.hidden):
                widths.append(base.hidden[i])
            else:
                widths.append(base.hidden[-1] if base.hidden else _FALLBACK_WIDTH)
        return tuple(widths)
