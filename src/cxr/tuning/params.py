"""One parameter of a search space (:class:`Param`), how a space file's entry becomes one
(:func:`parse_param`), and how drawn values become training settings (:func:`apply_values`).

Names: a :class:`~cxr.training.TrainConfig` field, ``augment.<field>``, or one of the head's
special names :data:`HIDDEN_LAYERS` and :data:`HIDDEN_WIDTH` (see :mod:`cxr.tuning.space`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr.errors import CxrError
from cxr.training.config import NONE_DEFAULT_TYPES, AugmentConfig, TrainConfig

if TYPE_CHECKING:
    import optuna

__all__ = [
    "HIDDEN_LAYERS",
    "HIDDEN_WIDTH",
    "SPECIAL",
    "Param",
    "SpaceError",
    "apply_values",
    "parse_param",
]

HIDDEN_LAYERS = "hidden_layers"
HIDDEN_WIDTH = "hidden_width"
#: The head's special names: not TrainConfig fields, drawn into ``hidden``.
SPECIAL = (HIDDEN_LAYERS, HIDDEN_WIDTH)
_RANGE_KEYS = {"low", "high", "log", "step"}


class SpaceError(CxrError, ValueError):
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


def _value_type(name: str) -> type | None:
    """int, float, or None (text, on/off, lists) for a setting name; raises KeyError when
    the name is no setting."""
    if name in SPECIAL:
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


def parse_param(name: str, spec: Any, source: str) -> Param:
    """One ``name: spec`` entry of a space file (``source`` names the file in errors):
    a range, a list of choices or one fixed value. Raises :class:`SpaceError`."""
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
