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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cxr.choices import POOLS
from cxr.training.config import (
    LOSSES,
    NONE_DEFAULT_TYPES,
    OPTIMIZERS,
    AugmentConfig,
    ConfigError,
    TrainConfig,
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

HIDDEN_LAYERS = "hidden_layers"
HIDDEN_WIDTH = "hidden_width"
_SPECIAL = (HIDDEN_LAYERS, HIDDEN_WIDTH)
#: Width of a dense layer when the space draws a layer count but no widths and the base
#: config has no layer to copy.
_FALLBACK_WIDTH = 256
_RANGE_KEYS = {"low", "high", "log", "step"}


class SpaceError(ValueError):
    """A search-space file or parameter is wrong; the message names it."""


@dataclass(frozen=True)
class Param:
    """One setting of a study, in one of three forms.

    Attributes:
        name: a TrainConfig field, ``augment.<field>``, ``hidden_layers`` or ``hidden_width``.
        low, high: the range (inclusive), for numeric settings.
        log: draw on a log scale (``low`` must be positive).
        step: draw on a grid of this spacing from ``low`` (not with ``log``).
        choices: draw one of these values.
        value: the fixed value when ``fixed``.
        fixed: set ``value``, do not search.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None
    fixed: bool = False

    @property
    def is_int(self) -> bool:
        return _value_type(self.name) is int

    def draw(self, trial: optuna.Trial, name: str | None = None) -> Any:
        """This parameter's value for ``trial`` (under ``name``; default: its own name)."""
        key = name or self.name
        if self.fixed:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.is_int:
            step = int(self.step) if self.step else 1
            return trial.suggest_int(key, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[Any]:
        """The values that bound this parameter (checked against the base config)."""
        if self.fixed:
            return [self.value]
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def to_dict(self) -> Any:
        """The YAML form of this parameter (a plain value when fixed)."""
        if self.fixed:
            return list(self.value) if isinstance(self.value, tuple) else self.value
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        if self.fixed:
            return f"{self.name}={self.value}"
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        scale = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.name} {self.low:g}..{self.high:g}{scale}"


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


def _value_type(name: str) -> type | None:
    """int, float, or None (text, on/off, lists) for a setting name; raises KeyError when
    the name is no setting."""
    if name in _SPECIAL:
        return int
    owner: AugmentConfig | TrainConfig = TrainConfig()
    field = name
    if name.startswith("augment."):
        owner, field = AugmentConfig(), name[len("augment.") :]
    if field == "augment" or field not in {f.name for f in dataclasses.fields(owner)}:
        raise KeyError(name)
    default = getattr(owner, field)
    if default is None:
        return NONE_DEFAULT_TYPES.get(field)
    if isinstance(default, bool):
        return None
    if isinstance(default, (int, float)):
        return type(default)
    return None


def apply_values(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with settings changed: TrainConfig field names and ``augment.<field>``
    (validated: ConfigError names the field)."""
    changes = {k: v for k, v in values.items() if not k.startswith("augment.")}
    aug = {k[len("augment.") :]: v for k, v in values.items() if k.startswith("augment.")}
    if "hidden" in changes and isinstance(changes["hidden"], list):
        changes["hidden"] = tuple(changes["hidden"])
    if aug:
        changes["augment"] = dataclasses.replace(base.augment, **aug)
    return base.replace(**changes) if changes else base


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
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpaceError(f"{path}: no such search-space file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SpaceError(f"{path}: cannot be read ({type(err).__name__})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise SpaceError(f"{path}{where}: not valid YAML ({problem})") from None
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
        given = [_parse(str(name), spec, source) for name, spec in specs.items()]
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
        values = {p.name: p.draw(trial) for p in self.params if p.name not in _SPECIAL}
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


def _number(value: Any, want: type | None, where: str, what: str) -> Any:
    """``value`` as an int or float (YAML reads 1e-5 as text: accepted)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpaceError(f"{where}: {what} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: {what} {value!r} is not a number")
    if want is int:
        if float(value) != int(value):
            raise SpaceError(f"{where}: {what} {value!r} must be a whole number (an int setting)")
        return int(value)
    return float(value)


def _parse(name: str, spec: Any, source: str) -> Param:
    """One ``name: spec`` entry of a space file."""
    where = f"{source}: params.{name}"
    try:
        kind = _value_type(name)
    except KeyError:
        raise SpaceError(
            f"{where}: unknown setting; use a TrainConfig field (as in config.yaml), "
            f"augment.<field>, {HIDDEN_LAYERS} or {HIDDEN_WIDTH}"
        ) from None
    if name in ("hidden", "labels"):
        if isinstance(spec, dict):
            raise SpaceError(
                f"{where}: only a fixed list can be given; search the head with "
                f"{HIDDEN_LAYERS} and {HIDDEN_WIDTH}"
            )
        return Param(name, value=spec, fixed=True)
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            raise SpaceError(f"{where}: write a list of values as {{choices: [...]}}")
        value = _number(spec, kind, where, "value") if kind is not None else spec
        return Param(name, value=value, fixed=True)
    keys = set(map(str, spec))
    if "choices" in keys:
        if keys != {"choices"}:
            raise SpaceError(
                f"{where}: choices cannot be combined with {sorted(keys - {'choices'})}"
            )
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {choices!r}")
        if kind is not None:
            choices = [_number(c, kind, where, "choice") for c in choices]
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad:
            raise SpaceError(
                f"{where}: choice {bad[0]!r} must be a number, text, true/false or null"
            )
        return Param(name, choices=tuple(choices))
    unknown = sorted(keys - _RANGE_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; give low/high (log, step) or choices")
    if kind is None:
        raise SpaceError(f"{where}: not a numeric setting; give {{choices: [...]}} or one value")
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{where}: a range needs both low and high")
    low = _number(spec["low"], kind, where, "low")
    high = _number(spec["high"], kind, where, "high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    step = None if spec.get("step") is None else _number(spec["step"], kind, where, "step")
    if low > high:
        raise SpaceError(f"{where}: low {low:g} is above high {high:g}")
    if log and low <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got {low:g}")
    if step is not None and (step <= 0 or log):
        raise SpaceError(f"{where}: step must be positive and cannot be combined with log")
    return Param(name, low=low, high=high, log=log, step=step)
