"""The run configuration: one dataclass, saved as ``config.yaml`` beside every run.

:class:`TrainConfig` holds every setting of ``cxr train``. It is written to the run
folder before the first step and read back by ``cxr train --resume RUN``, so a run can
always be told apart and repeated. Nested settings are plain dataclasses too
(:class:`AugmentConfig`); :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`
convert to and from plain YAML-safe values, refusing unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cxr.choices import CALIBRATIONS, POOLS, PRECISIONS, RECIPES
from cxr.errors import CxrError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
#: The value of ``recipe``, ``backbone`` and ``pretrained`` decided by the training set's
#: size when the run starts (:mod:`cxr.training.defaults`).
AUTO = "auto"
#: Epochs of each phase when the training set is large (phase -> epochs).
DEFAULT_EPOCHS = {1: 2, 2: 8}
#: The value type of the settings whose default is None (decided later: by the data).
NONE_DEFAULT_TYPES: dict[str, type] = {"phase1_epochs": int, "phase2_epochs": int}
SCHEDULES = ("cosine", "plateau", "constant")
LOSSES = ("weighted-bce", "pos-weight-bce", "inverse-frequency", "focal", "bce")


class ConfigError(CxrError, ValueError):
    """A setting is out of range or unknown; the message names it."""


class TrainError(CxrError, RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class AugmentConfig:
    """Per-batch augmentation, done on the training device (GPU or CPU tensors).

    Attributes:
        rotate: largest rotation in degrees (uniform in [-rotate, rotate]).
        scale: largest relative zoom (uniform in [1 - scale, 1 + scale]).
        translate: largest shift as a fraction of the image side.
        hflip: flip left-right with probability 0.5 (off by default: the heart is on
            the left, and a flipped film is not a real one).
        brightness: largest additive change of the [0, 1] intensities.
        contrast: largest relative change of the contrast around the image mean.
        enabled: False turns all of them off.
    """

    rotate: float = 7.0
    scale: float = 0.08
    translate: float = 0.05
    hflip: bool = False
    brightness: float = 0.08
    contrast: float = 0.12
    enabled: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``cxr train`` needs besides the data. Units are stated per field.

    Decided by the data: ``recipe``, ``backbone`` and ``pretrained`` default to ``"auto"``,
    decided when the run starts by the training set's size
    (:func:`cxr.training.defaults.resolve_auto`: the probe on an offline-pretrained backbone
    for a small set, DenseNet-121 fine-tuned for a large one); ``pretrained="none"`` is
    random initialisation (None).

    Recipe: ``recipe`` "finetune" (the two phases below) or "probe": one
    L2-penalised logistic regression per label on the frozen pretrained backbone's pooled
    features, its penalty chosen by cross-validation (:mod:`cxr.training.probe`; needs
    ``pretrained``, an average-pooled head without hidden layers or dropout; the phase,
    optimiser, loss and augmentation settings do not apply). ``folds`` K >= 2 (probe
    only): one model file whose K members, each fitted on K-1 of K patient folds, have
    their probabilities averaged; 1 (default): one model.

    Model: ``backbone`` (registry name or "auto"), ``pretrained`` (None, ``"imagenet"``, a
    weights file or "auto"), head ``pool`` (avg | gem), ``dropout``, ``hidden`` (widths of
    dense layers before the output layer), ``labels`` (None = all labels of the training cache).

    Two phases: ``phase1_epochs`` train the head with the backbone frozen at ``phase1_lr``;
    then ``phase2_epochs`` fine-tune everything at ``phase2_lr`` (the head at
    ``phase2_lr * head_lr_factor``). Either phase may have 0 epochs.

    Sized by the data: a phase whose epochs are None (the default) runs
    ``max(DEFAULT_EPOCHS[phase], ceil(phaseN_min_steps / optimiser steps per epoch))``
    epochs, so that a few hundred training images get enough optimiser steps to learn while
    a large set keeps the classic 2 + 8 epochs (the full NIH training set has about 2,400
    steps per epoch at batch 32). Epochs given explicitly are run exactly.
    :meth:`sized` resolves them; the saved ``config.yaml`` keeps the unsized values.

    Speed: ``channels_last`` (on by default; every registry backbone is convolutional)
    feeds the model NHWC tensors. ``deterministic``: True picks deterministic kernels
    (cuDNN's autotuner off), False lets cuDNN pick the fastest, None (the default) means
    True on CPUs and False on GPUs (see :meth:`deterministic_on`). A CPU run repeats
    exactly for the same seed and CPU thread count.
    """

    # recipe
    recipe: str = AUTO
    folds: int = 1
    # model
    backbone: str = AUTO
    pretrained: str | None = AUTO
    pool: str = "avg"
    dropout: float = 0.0
    hidden: tuple[int, ...] = ()
    labels: tuple[str, ...] | None = None
    # phases and optimisation
    phase1_epochs: int | None = None
    phase1_lr: float = 1e-3
    phase2_epochs: int | None = None
    phase2_lr: float = 1e-4
    phase1_min_steps: int = 75
    phase2_min_steps: int = 125
    head_lr_factor: float = 1.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    plateau_patience: int = 1
    plateau_factor: float = 0.1
    loss: str = "weighted-bce"
    focal_gamma: float = 2.0
    batch_size: int = 32
    accumulate: int = 1
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    early_stopping: int = 0
    calibration: str = "platt"
    # speed
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    loader_threads: int = 1
    val_batch_size: int = 128
    # data
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    deterministic: bool | None = None

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {what}")

        need(self.optimizer in OPTIMIZERS, "optimizer", f"choose one of {OPTIMIZERS}")
        need(self.schedule in SCHEDULES, "schedule", f"choose one of {SCHEDULES}")
        need(self.precision in PRECISIONS, "precision", f"choose one of {PRECISIONS}")
        need(self.loss in LOSSES, "loss", f"choose one of {LOSSES}")
        need(self.pool in POOLS, "pool", f"choose one of {POOLS}")
        need(self.calibration in CALIBRATIONS, "calibration", f"choose one of {CALIBRATIONS}")
        need(self.recipe in (*RECIPES, AUTO), "recipe", f"choose one of {(*RECIPES, AUTO)}")
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() == "none":
            object.__setattr__(self, "pretrained", None)
        need(
            not isinstance(self.folds, bool) and int(self.folds) >= 1,
            "folds",
            "must be 1 (one model) or K >= 2 (a probe ensemble of K fold models)",
        )
        for name in ("phase1_epochs", "phase2_epochs"):
            value = getattr(self, name)
            need(
                value is None or (not isinstance(value, bool) and int(value) >= 0),
                name,
                "must be 0 or more, or null (sized by the training set)",
            )
        for name in ("early_stopping", "plateau_patience", "phase1_min_steps", "phase2_min_steps"):
            need(int(getattr(self, name)) >= 0, name, "must be 0 or more")
        need(
            self.phase1_epochs is None or self.phase2_epochs is None or self.epochs > 0,
            "phase2_epochs",
            "phase1_epochs + phase2_epochs must be at least 1",
        )
        for name in ("batch_size", "accumulate", "val_batch_size", "loader_threads"):
            need(int(getattr(self, name)) >= 1, name, "must be 1 or more")
        for name in ("phase1_lr", "phase2_lr", "head_lr_factor"):
            need(float(getattr(self, name)) > 0, name, "must be positive")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1); 0 turns EMA off")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be 0 or more")
        need(
            self.deterministic is None or isinstance(self.deterministic, bool),
            "deterministic",
            "must be true, false or null (on for CPUs, off for GPUs)",
        )
        need(all(int(h) > 0 for h in self.hidden), "hidden", "layer widths must be positive")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", _from_dict(AugmentConfig, self.augment, "augment."))
        self._check_recipe(need)

    def _check_recipe(self, need: Callable[[bool, str, str], None]) -> None:
        """The settings the recipe cannot use, refused by name."""
        if self.recipe == AUTO:  # decided with the data (cxr.training.defaults)
            return
        if self.recipe != "probe":
            need(
                int(self.folds) == 1,
                "folds",
                "K fine-tuned backbones in one model are not supported; use --recipe probe "
                "for an ensemble of K probes fitted on K-1 of K patient folds, or --folds 1",
            )
            return
        need(
            self.pretrained is not None,
            "pretrained",
            "the probe recipe fits linear heads on the frozen backbone's features, and a "
            "randomly initialised backbone gives useless features; give --pretrained "
            "imagenet or a backbone weights file",
        )
        need(
            not self.hidden,
            "hidden",
            "the probe recipe fits one linear layer on the pooled features; drop --hidden "
            "(or use --recipe finetune)",
        )
        need(
            self.pool == "avg",
            "pool",
            "the probe recipe uses average pooling (a GeM exponent would have to be "
            "learned); use --pool avg",
        )
        need(
            self.dropout == 0.0,
            "dropout",
            "the probe recipe's head has no dropout (its penalty is chosen by "
            "cross-validation); use --dropout 0",
        )

    def deterministic_on(self, device_type: str) -> bool:
        """Whether the run picks deterministic kernels on a device of ``device_type``:
        ``deterministic`` when set, else (None, the default) on for CPUs, where it costs
        nothing, and off on GPUs, where cuDNN's autotuner picks the fastest kernels."""
        if self.deterministic is not None:
            return bool(self.deterministic)
        return device_type != "cuda"

    @property
    def epochs(self) -> int:
        """Total epochs over both phases (of a :meth:`sized` configuration when either
        phase is sized by the data)."""
        if self.phase1_epochs is None or self.phase2_epochs is None:
            raise ConfigError(
                "phase1_epochs/phase2_epochs: sized by the training set; call "
                "config.sized(steps_per_epoch) first"
            )
        return int(self.phase1_epochs) + int(self.phase2_epochs)

    def sized(self, steps_per_epoch: int) -> TrainConfig:
        """This configuration with every phase's epochs decided: epochs given explicitly
        are kept; a phase left at None runs ``max(DEFAULT_EPOCHS[phase],
        ceil(min_steps / steps_per_epoch))`` epochs.

        Args:
            steps_per_epoch: optimiser steps in one epoch (batches / accumulate, per process).
        """
        steps = max(int(steps_per_epoch), 1)
        changes: dict[str, int] = {}
        for phase, default in DEFAULT_EPOCHS.items():
            name = f"phase{phase}_epochs"
            if getattr(self, name) is None:
                need = math.ceil(int(getattr(self, f"phase{phase}_min_steps")) / steps)
                changes[name] = max(default, need)
        return self.replace(**changes) if changes else self

    def sizing_note(self, steps_per_epoch: int) -> str | None:
        """One line when the data sized a phase beyond its default epochs, else None."""
        sized = self.sized(steps_per_epoch)
        longer = [
            f"phase {k}: {getattr(sized, f'phase{k}_epochs')} epochs (at least "
            f"{getattr(self, f'phase{k}_min_steps')} steps, --phase{k}-min-steps)"
            for k, default in DEFAULT_EPOCHS.items()
            if getattr(self, f"phase{k}_epochs") is None
            and getattr(sized, f"phase{k}_epochs") > default
        ]
        if not longer:
            return None
        return f"small training set ({steps_per_epoch} optimiser steps per epoch): " + "; ".join(
            longer
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists for tuples), safe for YAML and JSON."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["labels"] = None if self.labels is None else list(self.labels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; an unknown key is an error that names it."""
        return _from_dict(cls, values, "")

    def save(self, path: str | Path) -> Path:
        """Write the configuration as YAML."""
        path = Path(path)
        path.write_text(
            "# cxr training configuration\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a configuration written by :meth:`save` (or by hand)."""
        path = Path(path)
        values = read_yaml(path, ConfigError, "configuration file")
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of settings")
        try:
            return cls.from_dict(values)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None


def read_yaml(path: Path, error: type[Exception], what: str) -> Any:
    """The YAML document in ``path``. A missing or unreadable file, or text that is no
    valid YAML, raises ``error`` with a one-line message naming the file (``what`` says
    what kind of file it should be) and, for bad YAML, the line and column."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot be read ({type(err).__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise error(f"{path}{where}: not valid YAML ({problem})") from None


def _from_dict(cls: type, values: dict[str, Any], prefix: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {[prefix + k for k in unknown]}; known: {sorted(known)}"
        )
    values = dict(values)
    if "hidden" in values and values["hidden"] is not None:
        values["hidden"] = tuple(values["hidden"])
    if "labels" in values and values["labels"] is not None:
        values["labels"] = tuple(values["labels"])
    if cls is TrainConfig and isinstance(values.get("augment"), dict):
        values["augment"] = _from_dict(AugmentConfig, values["augment"], "augment.")
    return cls(**values)
