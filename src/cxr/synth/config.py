"""Phantom settings: the findings, their size ranges, :class:`SynthConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The findings the phantoms can carry, in column order.
SYNTH_LABELS: tuple[str, ...] = (
    "Cardiomegaly",
    "Effusion",
    "Mass",
    "Nodule",
    "Pneumothorax",
    "Consolidation",
)

FORMAT_VERSION = 1
#: Cardiothoracic ratios drawn for normal hearts and for Cardiomegaly.
NORMAL_CTR: tuple[float, float] = (0.37, 0.475)
ENLARGED_CTR: tuple[float, float] = (0.55, 0.68)
#: Lesion diameters as fractions of the image side.
MASS_DIAMETER: tuple[float, float] = (0.08, 0.15)
NODULE_DIAMETER: tuple[float, float] = (0.04, 0.075)

F32 = np.float32


# configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """What :func:`generate_phantoms` makes.

    Attributes:
        n_images: number of images.
        size: side of the square images in pixels (>= 32).
        seed: random seed (integer >= 0); the same config gives the same files.
        prevalence: probability of each finding, independently, per image (0 < p < 1).
        images_per_patient: mean number of images per patient (>= 1); a patient has
            ``1 + Poisson(images_per_patient - 1)`` images (at most 10).
        labels: the findings to plant, a subset of :data:`SYNTH_LABELS`; the table's
            label columns in this order.
    """

    n_images: int = 600
    size: int = 256
    seed: int = 0
    prevalence: float = 0.3
    images_per_patient: float = 1.5
    labels: tuple[str, ...] = SYNTH_LABELS

    def __post_init__(self) -> None:
        def is_int(x: object) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if not is_int(self.n_images) or self.n_images < 1:
            raise ValueError(f"n_images must be an integer >= 1, got {self.n_images!r}")
        if not is_int(self.size) or not 32 <= self.size <= 4096:
            raise ValueError(f"size must be an integer from 32 to 4096 pixels, got {self.size!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if (
            not isinstance(self.prevalence, (int, float))
            or isinstance(self.prevalence, bool)
            or not 0.0 < float(self.prevalence) < 1.0
        ):
            raise ValueError(
                f"prevalence must be a number strictly between 0 and 1, got {self.prevalence!r}"
            )
        ipp = self.images_per_patient
        if (
            not isinstance(ipp, (int, float))
            or isinstance(ipp, bool)
            or not math.isfinite(ipp)
            or not 1.0 <= ipp <= 10.0
        ):
            raise ValueError(f"images_per_patient must be a mean from 1 to 10, got {ipp!r}")
        if isinstance(self.labels, str):
            raise ValueError(
                f"labels must be a sequence of label names, not the string {self.labels!r}"
            )
        labels = tuple(_canonical_finding(n) for n in self.labels)
        if not labels:
            raise ValueError(f"labels must name at least one of {list(SYNTH_LABELS)}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat: {list(self.labels)}")
        object.__setattr__(self, "n_images", int(self.n_images))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "prevalence", float(self.prevalence))
        object.__setattr__(self, "images_per_patient", float(ipp))
        object.__setattr__(self, "labels", labels)


def _canonical_finding(name: str) -> str:
    from cxr.labels import canonical_label

    canon = canonical_label(name)
    if canon not in SYNTH_LABELS:
        raise ValueError(f"the phantoms cannot show {name!r}; known findings: {list(SYNTH_LABELS)}")
    return canon
