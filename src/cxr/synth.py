"""Phantom chest radiographs with planted findings and a pixel mask per finding.

The phantoms are the built-in data set of ``cxr demo`` and the test data of the whole
toolkit: they are cheap to make, need no download and come with the truth, both the
labels and *where* each finding is (for checking Grad-CAM localisation).

Each image is drawn with vectorised numpy from a small geometric model of a PA chest
film: a dark background, the soft-tissue body, two dark lung fields with lung markings,
the heart shadow over the lower middle, the spine, posterior rib arcs, clavicles, the
diaphragm domes, smooth low-frequency and pixel noise. A patient's anatomy
(:class:`PatientAnatomy`) is drawn once; every image of that patient (its follow-ups)
uses it with small variations (position, inspiration, heart size), and each image has
its own exposure (a film-like sigmoid characteristic curve of random slope and level,
gamma, noise). Lesions are placed in aerated lung, clear of the heart, fluid, the
pneumothorax rim and each other.

Findings (the names of :data:`SYNTH_LABELS`, canonical :mod:`cxr.labels` spelling):

``Cardiomegaly``
    heart shadow enlarged: cardiothoracic ratio 0.55-0.68 (normals 0.37-0.475).
    Mask: the heart shadow.
``Effusion``
    bright basal opacity in one or both costophrenic angles, with a meniscus-shaped
    upper border (higher at the chest wall). Mask: the fluid region.
``Mass``
    one round, slightly lobulated opacity of diameter 8-15 % of the image in a lung.
    Mask: the disc.
``Nodule``
    one or two small round opacities of diameter 2.5-5 % of the image. Mask: the discs.
``Pneumothorax``
    the lung of one side collapsed towards the hilum: a dark rim along its apical and
    lateral edge without lung markings (ribs show faintly), bounded by a thin bright
    pleural line. Mask: the lucent rim.
``Consolidation``
    a patchy, elongated, ill-defined opacity with air bronchograms, confined to one lung
    field. Mask: where it is (its faint edge included).

Randomness: :func:`render_phantom` takes a :class:`numpy.random.Generator`. It first
draws one seed for the normal image and one per label of :data:`SYNTH_LABELS`, so that
two calls with generators in the same state and the same anatomy draw the same image
whatever the findings, except for the findings themselves (compare an image with and
without a finding pixel by pixel). :func:`generate_phantoms` derives every random
stream from ``SeedSequence(seed, spawn_key=...)``: the plan (patients, labels) from key
``(0,)``, patient ``p``'s anatomy from ``(1, p)`` and its image ``k`` from ``(2, p, k)``;
the files are therefore byte-identical for one configuration whatever ``workers`` is.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Collection, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr.table import LabelTable

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
NODULE_DIAMETER: tuple[float, float] = (0.025, 0.05)

_F32 = np.float32


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
        if not isinstance(self.prevalence, (int, float)) or isinstance(self.prevalence, bool) \
                or not 0.0 < float(self.prevalence) < 1.0:
            raise ValueError(f"prevalence must be a number strictly between 0 and 1, "
                             f"got {self.prevalence!r}")
        ipp = self.images_per_patient
        if not isinstance(ipp, (int, float)) or isinstance(ipp, bool) \
                or not math.isfinite(ipp) or not 1.0 <= ipp <= 10.0:
            raise ValueError(f"images_per_patient must be a mean from 1 to 10, got {ipp!r}")
        if isinstance(self.labels, str):
            raise ValueError(f"labels must be a sequence of label names, not the string "
                             f"{self.labels!r}")
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


# anatomy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientAnatomy:
    """The fixed anatomy of one patient, in body coordinates.

    Body coordinates ``(u, v)``: the image spans [-1, 1] in both directions (``v`` down)
    before the body is placed with ``cx, cy`` (shift), ``scale``, ``aspect`` (horizontal
    stretch) and ``tilt`` (radians). ``u < 0`` is the image left (the patient's right in a
    PA view). Draw one with :meth:`sample`; :meth:`follow_up` varies it slightly.
    """

    cx: float = 0.0
    cy: float = 0.0
    scale: float = 1.0
    aspect: float = 1.0
    tilt: float = 0.0
    tissue: float = 0.70          # soft-tissue density of the body
    lung_cx: float = 0.42         # lung centres at u = +-lung_cx
    lung_cy: float = -0.02
    lung_a_lat: float = 0.36      # lateral half-width (the chest wall at lung_cx + a_lat)
    lung_a_med: float = 0.30      # medial half-width
    lung_b_up: float = 0.72       # apex above the centre
    lung_p: float = 2.4           # superellipse exponent of the lung outline
    dome_right: float = 0.40      # top of the right hemidiaphragm (image left)
    dome_left: float = 0.44
    dome_curv: float = 0.24
    air: float = 0.45             # darkening of aerated lung
    ctr: float = 0.43             # normal cardiothoracic ratio
    heart_dx: float = 0.03
    heart_tilt: float = 0.45
    heart_ratio: float = 0.8
    spine_w: float = 0.055
    rib_spacing: float = 0.135
    rib_top: float = -0.86
    rib_curv: float = 1.3
    rib_density: float = 0.085
    marking: float = 0.075        # strength of the lung markings
    texture_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "PatientAnatomy":
        """A random patient: body placement within a few %, organ shapes, texture."""
        r = rng.uniform
        dome_right = r(0.37, 0.45)
        tissue = r(0.64, 0.74)
        return cls(
            cx=r(-0.04, 0.04), cy=r(-0.03, 0.04), scale=r(0.93, 1.04), aspect=r(0.95, 1.05),
            tilt=r(-0.035, 0.035), tissue=tissue,
            lung_cx=r(0.40, 0.44), lung_cy=r(-0.04, 0.0), lung_a_lat=r(0.34, 0.38),
            lung_a_med=r(0.28, 0.31), lung_b_up=r(0.68, 0.76), lung_p=r(2.2, 2.7),
            dome_right=dome_right, dome_left=dome_right + r(0.0, 0.06), dome_curv=r(0.2, 0.28),
            air=tissue * r(0.6, 0.68), ctr=r(*NORMAL_CTR), heart_dx=r(0.0, 0.06),
            heart_tilt=r(0.35, 0.55), heart_ratio=r(0.74, 0.86), spine_w=r(0.05, 0.062),
            rib_spacing=r(0.125, 0.145), rib_top=r(-0.9, -0.82), rib_curv=r(1.1, 1.5),
            rib_density=r(0.07, 0.10), marking=r(0.06, 0.09),
            texture_seed=int(rng.integers(0, 2**62)),
        )

    def follow_up(self, rng: np.random.Generator) -> "PatientAnatomy":
        """The same patient on another day: position, inspiration and heart size vary a little."""
        r = rng.uniform
        d = r(-0.015, 0.015)
        return replace(
            self,
            cx=self.cx + r(-0.015, 0.015), cy=self.cy + r(-0.015, 0.015),
            scale=self.scale * r(0.985, 1.015), tilt=self.tilt + r(-0.01, 0.01),
            dome_right=self.dome_right + d, dome_left=self.dome_left + d,
            ctr=float(np.clip(self.ctr + r(-0.01, 0.01), NORMAL_CTR[0], NORMAL_CTR[1])),
            tissue=self.tissue + r(-0.01, 0.01),
        )

    @property
    def thorax_half_width(self) -> float:
        """Half the inner width of the thorax (lateral lung edges), body units."""
        return self.lung_cx + self.lung_a_lat


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """A random patient anatomy (same as :meth:`PatientAnatomy.sample`)."""
    return PatientAnatomy.sample(rng)


# rendering helpers -------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise (size, size), unit-ish variance, about ``cells`` bumps across."""
    g = rng.standard_normal((cells + 2, cells + 2)).astype(_F32)
    off = rng.uniform(0, 1, 2)
    t = (np.arange(size, dtype=_F32) + 0.5) * (cells / size)
    ty, tx = t + _F32(off[0]), t + _F32(off[1])
    return _interp_matrix(ty, cells + 2) @ g @ _interp_matrix(tx, cells + 2).T


def _interp_matrix(t: np.ndarray, n: int) -> np.ndarray:
    """(len(t), n) weights of smooth (smoothstep) interpolation between grid nodes."""
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    w = np.zeros((len(t), n), dtype=_F32)
    rows = np.arange(len(t))
    w[rows, i] = 1 - f
    w[rows, i + 1] = f
    return w


def _ramp(z: np.ndarray) -> np.ndarray:
    """Anti-aliased edge: 0 below -0.5, 1 above 0.5 (z in pixels inside the edge)."""
    return np.clip(z + 0.5, 0.0, 1.0)


def _smoothstep(z: np.ndarray) -> np.ndarray:
    z = np.clip(z, 0.0, 1.0)
    return z * z * (3 - 2 * z)


def _lung_F(an: PatientAnatomy, side: int, u, v):
    """Implicit lung outline: < 1 inside, ~ (distance / 0.33) outside the edge."""
    du = u - side * an.lung_cx
    dv = v - an.lung_cy
    a = np.where(du * side > 0, _F32(an.lung_a_lat), _F32(an.lung_a_med))
    b = np.where(dv < 0, _F32(an.lung_b_up), _F32(1.25))
    p = an.lung_p
    s = (np.abs(du / a) ** p + np.abs(dv / b) ** p) ** (1.0 / p)
    return np.maximum(s, 1 + (v - _dome(an, side, u)) / 0.33)


def _dome(an: PatientAnatomy, side: int, u):
    top = an.dome_right if side < 0 else an.dome_left
    return top + an.dome_curv * ((u - side * 0.40) / 0.4) ** 2


@dataclass
class _Heart:
    hx: float
    hy: float
    a: float
    b: float
    cos: float
    sin: float

    def F(self, u, v):
        du, dv = u - self.hx, v - self.hy
        x = (du * self.cos + dv * self.sin) / self.a
        y = (-du * self.sin + dv * self.cos) / self.b
        return np.sqrt(x * x + y * y)


def _heart(an: PatientAnatomy, ctr: float) -> _Heart:
    w = ctr * an.thorax_half_width           # horizontal half-extent
    th, r = an.heart_tilt, an.heart_ratio
    c, s = math.cos(th), math.sin(th)
    a = w / math.sqrt(c * c + r * r * s * s)
    b = r * a
    hv = math.sqrt(a * a * s * s + b * b * c * c)
    dome = 0.5 * (an.dome_right + an.dome_left)
    return _Heart(an.heart_dx + 0.3 * w, dome + 0.16 - hv, a, b, c, s)


@dataclass
class _Scene:
    """The findings' geometry, shared by placement checks and drawing."""

    an: PatientAnatomy
    heart: _Heart
    pneumo: tuple[int, float, float, float, float] | None = None  # side, fx, fy, ax, ay
    effusion: dict[int, tuple[float, float]] = field(default_factory=dict)  # side: (h, med)
    discs: list[tuple[float, float, float]] = field(default_factory=list)   # occupied

    def collapsed_F(self, side, u, v):
        _, fx, fy, ax, ay = self.pneumo
        return _lung_F(self.an, side, ax + (u - ax) / fx, ay + (v - ay) / fy)

    def meniscus(self, side, u):
        """Upper border of the fluid (v) on one side, higher at the chest wall."""
        h, med = self.effusion[side]
        an = self.an
        u_med = side * 0.3
        u_lat = side * (an.lung_cx + an.lung_a_lat)
        t = np.clip((u - u_med) / (u_lat - u_med), 0.0, 1.0)
        top = an.dome_right if side < 0 else an.dome_left
        return top - h * (med + (1 - med) * t ** 3)

    def aerated(self, u, v, margin=0.0):
        """Points in aerated lung (not heart, fluid, collapse rim), ``margin`` inside."""
        ok = np.zeros(np.shape(u), dtype=bool)
        m = margin / 0.33
        for side in (-1, 1):
            inside = _lung_F(self.an, side, u, v) < 1 - m
            if self.pneumo is not None and self.pneumo[0] == side:
                inside &= self.collapsed_F(side, u, v) < 1 - m
            if side in self.effusion:
                inside &= v < self.meniscus(side, u) - margin - 0.02
            ok |= inside
        return ok & (self.heart.F(u, v) > 1 + margin / self.heart.b)

    def place(self, rng: np.random.Generator, radius: float, margin: float = 0.02,
              zone: tuple[float, float] = (-1.0, 1.0)) -> tuple[float, float]:
        """A centre whose disc of ``radius`` (+margin) lies in aerated lung, free of others."""
        an = self.an
        ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        best, best_score = None, -1
        for _ in range(6):
            k = 64
            side = np.where(rng.random(k) < 0.5, -1.0, 1.0)
            cu = side * (an.lung_cx + rng.uniform(-an.lung_a_med, an.lung_a_lat, k) * 0.95)
            cv = rng.uniform(max(zone[0], an.lung_cy - an.lung_b_up), min(zone[1], 0.62), k)
            rr = radius + margin
            pu = np.concatenate([cu[:, None], cu[:, None] + rr * np.cos(ang)], axis=1)
            pv = np.concatenate([cv[:, None], cv[:, None] + rr * np.sin(ang)], axis=1)
            score = self.aerated(pu, pv).sum(axis=1)
            for (du_, dv_, dr) in self.discs:
                score = np.where(np.hypot(cu - du_, cv - dv_) < dr + radius + margin, -1, score)
            i = int(np.argmax(score))
            if score[i] > best_score:
                best, best_score = (float(cu[i]), float(cv[i])), int(score[i])
            if best_score == pu.shape[1]:
                break
        return best


# the renderer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomRender:
    """One rendered phantom with the anatomy the checks need.

    Attributes:
        image: uint8 (size, size).
        masks: {label: bool (size, size)}, one per planted finding.
        lungs: bool (size, size), the two lung fields of the normal anatomy.
        heart: bool (size, size), the heart shadow as drawn (enlarged with Cardiomegaly).
        thorax: (first, last) image column of the lung fields.
        ctr: the cardiothoracic ratio drawn (heart width / thorax width).
        anatomy: the anatomy used.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    lungs: np.ndarray
    heart: np.ndarray
    thorax: tuple[int, int]
    ctr: float
    anatomy: PatientAnatomy


def render_phantom(
    rng: np.random.Generator,
    size: int,
    findings: Collection[str],
    anatomy: PatientAnatomy | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one phantom radiograph with the given findings.

    Args:
        rng: the random generator (advanced by the call).
        size: side in pixels (>= 16).
        findings: names from :data:`SYNTH_LABELS` (any :func:`cxr.labels.canonical_label`
            spelling); empty for a normal image.
        anatomy: the patient; None draws a new one from ``rng`` first.

    Returns:
        ``(image, masks)``: uint8 (size, size) and {label: bool (size, size)} with one
        non-empty mask per planted finding.
    """
    r = render_phantom_details(rng, size, findings, anatomy)
    return r.image, r.masks


def render_phantom_details(
    rng: np.random.Generator,
    size: int,
    findings: Collection[str],
    anatomy: PatientAnatomy | None = None,
) -> PhantomRender:
    """:func:`render_phantom`, returning also lung and heart masks and the drawn CTR."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    size = int(size)
    if isinstance(findings, str):
        findings = [findings]
    wanted = {_canonical_finding(f) for f in findings}
    an = anatomy if anatomy is not None else PatientAnatomy.sample(rng)
    seeds = rng.integers(0, 2**63, size=1 + len(SYNTH_LABELS))
    img_rng = np.random.default_rng(int(seeds[0]))
    lab_rng = {name: np.random.default_rng(int(s)) for name, s in zip(SYNTH_LABELS, seeds[1:])}

    # grid in body coordinates
    c = (np.arange(size, dtype=_F32) + 0.5) * _F32(2.0 / size) - 1
    x = c[None, :] - _F32(an.cx)
    y = c[:, None] - _F32(an.cy)
    ct, st = _F32(math.cos(an.tilt)), _F32(math.sin(an.tilt))
    u = (x * ct + y * st) / _F32(an.scale * an.aspect)
    v = (-x * st + y * ct) / _F32(an.scale)
    px = 2.0 / size / an.scale                       # one pixel in body units
    au = np.abs(u)

    # findings' geometry (each from its own generator) -------------------------------
    if "Cardiomegaly" in wanted:
        ctr = float(lab_rng["Cardiomegaly"].uniform(*ENLARGED_CTR))
    else:
        ctr = float(an.ctr)
    scene = _Scene(an, _heart(an, ctr))
    if "Pneumothorax" in wanted:
        g = lab_rng["Pneumothorax"]
        side = -1 if g.random() < 0.5 else 1
        f = g.uniform(0.70, 0.86)
        scene.pneumo = (side, f * g.uniform(0.97, 1.06), f, side * (an.lung_cx - 0.12),
                        _dome(an, side, side * 0.3) - 0.08)
    if "Effusion" in wanted:
        g = lab_rng["Effusion"]
        sides = [(-1, 1)[int(g.random() < 0.5)]]
        if g.random() < 0.3:
            sides = [-1, 1]
        for side in sides:
            scene.effusion[side] = (g.uniform(0.22, 0.4), g.uniform(0.0, 0.2))
    cons = None
    if "Consolidation" in wanted:
        g = lab_rng["Consolidation"]
        radius = g.uniform(0.17, 0.26)
        cu, cv = scene.place(g, radius * 0.45, 0.0, zone=(-0.45, 0.5))
        cons = (cu, cv, radius, g.uniform(0.65, 0.9), g)
        scene.discs.append((cu, cv, radius * 0.8))
    mass = None
    if "Mass" in wanted:
        g = lab_rng["Mass"]
        radius = max(g.uniform(*MASS_DIAMETER) / an.scale, 1.2 * px)
        cu, cv = scene.place(g, radius)
        mass = (cu, cv, radius, g.uniform(0.22, 0.32), g.uniform(0, 0.07, 2), g.uniform(0, 6.3, 2))
        scene.discs.append((cu, cv, radius))
    nodules = []
    if "Nodule" in wanted:
        g = lab_rng["Nodule"]
        for _ in range(1 if g.random() < 0.6 else 2):
            radius = max(g.uniform(*NODULE_DIAMETER) / an.scale, 0.8 * px)
            cu, cv = scene.place(g, radius, 0.04)
            nodules.append((cu, cv, radius, g.uniform(0.24, 0.36)))
            scene.discs.append((cu, cv, radius + 0.03))

    # normal anatomy ------------------------------------------------------------------
    fb = ((au / 0.93) ** 3.5 + np.abs((v - 0.2) / 1.3) ** 3.5) ** (1 / 3.5)
    body = np.sqrt(np.clip(1 - fb**4, 0, 1))
    dens = an.tissue * body
    # lungs
    lungF = {s: _lung_F(an, s, u, v) for s in (-1, 1)}
    lung_soft = {s: _ramp((1 - lungF[s]) * (0.33 / px)) for s in (-1, 1)}
    domes = np.where(u < 0, _dome(an, -1, u), _dome(an, 1, u))
    heart_F = scene.heart.F(u, v)
    heart_soft = _ramp((1 - heart_F) * (scene.heart.b / px)) * _ramp((domes + 0.03 - v) / px)
    not_heart = 1 - heart_soft
    tex_rng = np.random.default_rng(an.texture_seed)
    n1 = _value_noise(tex_rng, size, 13) + 0.5 * _value_noise(tex_rng, size, 27)
    n2 = _value_noise(tex_rng, size, 17)
    ridge = np.exp(-(n1 / 0.16) ** 2) + 0.6 * np.exp(-(n2 / 0.12) ** 2)
    lung_var = 0.06 * _value_noise(tex_rng, size, 5)
    aer = {s: lung_soft[s].copy() for s in (-1, 1)}       # lung tissue present (0..1)
    gap = None
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        cF = scene.collapsed_F(s, u, v)
        aer[s] = np.minimum(aer[s], _ramp((1 - cF) * (0.33 / px)))
        gap = np.clip(lung_soft[s] - aer[s], 0, 1)
    air = (aer[-1] + aer[1]) * not_heart
    marks = air.copy()
    hil = np.float32(0)
    for s in (-1, 1):
        d2 = (u - s * 0.24) ** 2 / 0.5 ** 2 + (v - 0.02) ** 2 / 0.6 ** 2
        hil = hil + np.exp(-d2 * 2.5)
    # effusion and consolidation take the air out of the lung
    eff_masks = {}
    for s, _ in scene.effusion.items():
        m = scene.meniscus(s, u)
        eff = _ramp((v - m) / px) * (0.8 + 0.2 * _smoothstep((v - m) / 0.1))
        eff = eff * _ramp((u * s - (an.lung_cx - an.lung_a_med - 0.02)) / px)
        eff_masks[s] = (v > m) & (lungF[s] < 1) & (heart_F >= 1)
        air = air * (1 - 0.92 * eff)
        marks = marks * (1 - eff)
        dens = dens + 0.03 * eff * lung_soft[s] * not_heart * _smoothstep((v - m) / 0.15)
        if gap is not None and s == scene.pneumo[0]:
            gap = gap * (1 - eff)
    cons_field = None
    if cons is not None:
        cu, cv, radius, sev, g = cons
        # an elongated, blotchy patch with ill-defined edges and air bronchograms
        ang, elong = g.uniform(0, np.pi), g.uniform(1.3, 1.9)
        du, dv = u - cu, v - cv
        a_ = (du * math.cos(ang) + dv * math.sin(ang)) / (radius * elong)
        b_ = (-du * math.sin(ang) + dv * math.cos(ang)) / (radius / elong**0.5)
        cells = max(6, int(round(2.5 / (radius * an.scale))))
        blotch = _value_noise(g, size, cells) + 0.4 * _value_noise(g, size, 2 * cells)
        patch = np.exp(-0.9 * (a_ * a_ + b_ * b_)) * (0.72 + 0.28 * np.tanh(1.5 * blotch))
        side = -1 if cu < 0 else 1
        cons_field = _smoothstep((patch - 0.14) / 0.4) * aer[side] * not_heart
        bronchi = np.exp(-((_value_noise(g, size, 2 * cells) / 0.12) ** 2))
        air = air * (1 - sev * cons_field * (1 - 0.45 * bronchi))
        marks = marks * (1 - 0.8 * cons_field)
    if gap is not None:
        air = air + 1.4 * gap * not_heart      # no lung tissue in the rim: darker
    # lower zones look denser (soft tissue in front), apices darker
    zone = 0.82 + 0.18 * _smoothstep((v + 0.2) / 0.8)
    dens = dens - an.air * air * (1.08 - 0.14 * zone + lung_var)
    dens = dens + an.marking * marks * ridge * (0.35 + 0.9 * hil) + 0.05 * hil * marks
    dens = dens + 0.04 * heart_soft * body
    # bones: spine, ribs, clavicles
    spine = _ramp((an.spine_w - au) / px)
    vert = np.mod((v - an.rib_top) / an.rib_spacing, 1.0)
    spine = spine * (0.85 + 0.15 * _smoothstep(np.minimum(vert, 1 - vert) * 8))
    dens = dens + 0.10 * spine * body
    q = (v - an.rib_curv * (au - 0.2) ** 2 - 0.12 * au - an.rib_top) / an.rib_spacing
    frac = np.mod(q, 1.0)
    wf = 0.42
    band = np.maximum(np.sin(np.pi * np.clip(frac / wf, 0, 1)), 0) ** 0.35
    below = np.maximum(v - domes, 0)
    rib_gate = _ramp((au - 0.06) / 0.02) * (q > 0) * np.exp(-((below / 0.12) ** 2))
    ribs = band * rib_gate * body
    if gap is not None:
        ribs = ribs * (1 - 0.6 * gap)
    dens = dens + an.rib_density * ribs
    clav = np.float32(0)
    for s in (-1, 1):
        ax_, ay_, bx_, by_ = s * 0.07, an.lung_cy - an.lung_b_up + 0.03, s * 0.68, \
            an.lung_cy - an.lung_b_up - 0.12
        dx, dy = bx_ - ax_, by_ - ay_
        t = np.clip(((u - ax_) * dx + (v - ay_) * dy) / (dx * dx + dy * dy), 0, 1)
        dist = np.hypot(u - ax_ - t * dx, v - ay_ - t * dy)
        clav = clav + _ramp((0.032 - dist) / px)
    dens = dens + 0.12 * np.minimum(clav, 1) * body
    # trachea
    dens = dens - 0.10 * _ramp((0.035 - au) / px) * _smoothstep((-0.28 - v) / 0.1) * body

    # pleural line of the collapsed lung, lesions ----------------------------------------
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        lw = max(0.6 * px, 0.006)
        line = np.exp(-(((1 - cF) * 0.33 - lw) / lw) ** 2)
        line = line * np.clip((1 - lungF[s]) / 0.06, 0, 1) * not_heart
        dens = dens + 0.16 * line
    if mass is not None:
        cu, cv, radius, amp, wob, phase = mass
        du, dv = u - cu, v - cv
        d = np.sqrt(du * du + dv * dv)
        theta = np.arctan2(dv, du)
        rad = radius * (1 + wob[0] * np.sin(3 * theta + phase[0]) + wob[1] * np.sin(5 * theta + phase[1]))
        dn = d / rad
        disc = _ramp((rad - d) / px)
        dens = dens + amp * disc * (0.8 + 0.2 * np.sqrt(np.clip(1 - dn * dn, 0, 1)))
        mass_mask = dn < 1
    nod_mask = np.zeros((size, size), dtype=bool) if nodules else None
    for cu, cv, radius, amp in nodules:
        d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        dens = dens + amp * _ramp((radius - d) / px)
        nod_mask |= d < radius

    # exposure, noise, quantisation ----------------------------------------------------
    r = img_rng.uniform
    # film-like characteristic curve: a sigmoid of the density, per-image exposure
    k, mid, gamma = r(5.0, 6.5), r(0.36, 0.41), r(0.9, 1.1)
    low = _value_noise(img_rng, size, 4) * _F32(r(0.01, 0.025))
    lo, hi = 1 / (1 + math.exp(k * mid)), 1 / (1 + math.exp(-k * (1.05 - mid)))
    img = (1 / (1 + np.exp(-k * (dens + low - mid))) - lo) * _F32(1 / (hi - lo))
    img = 0.03 + 0.95 * np.clip(img, 0, 1) ** gamma
    img = img + img_rng.standard_normal((size, size), dtype=_F32) * _F32(r(0.006, 0.016))
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)

    # masks -----------------------------------------------------------------------------
    lungs = (lungF[-1] < 1) | (lungF[1] < 1)
    heart = (heart_F < 1) & (v < domes + 0.03)
    masks: dict[str, np.ndarray] = {}
    if "Cardiomegaly" in wanted:
        masks["Cardiomegaly"] = heart
    if "Effusion" in wanted:
        masks["Effusion"] = np.logical_or.reduce(list(eff_masks.values()))
    if mass is not None:
        masks["Mass"] = mass_mask
    if nod_mask is not None:
        masks["Nodule"] = nod_mask
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        pm = (lungF[s] < 1) & (cF >= 1) & ~heart
        if s in eff_masks:
            pm &= ~eff_masks[s]
        masks["Pneumothorax"] = pm
    if cons_field is not None:
        masks["Consolidation"] = (cons_field >= 0.08) & lungs
    for name, m in masks.items():
        if not m.any():  # a tiny image: keep the promise of a non-empty mask
            field_ = {"Consolidation": cons_field, "Pneumothorax": gap}.get(name)
            at = np.argmax(field_) if field_ is not None else (size // 2) * size + size // 2
            m[np.unravel_index(int(at), m.shape)] = True
    cols = np.flatnonzero(lungs.any(axis=0))
    thorax = (int(cols[0]), int(cols[-1])) if cols.size else (0, size - 1)
    return PhantomRender(image, masks, lungs, heart, thorax, ctr, an)


# generating a data set ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    name: str
    patient: int
    index: int
    findings: tuple[str, ...]


def _plan(config: SynthConfig) -> tuple[list[_Item], np.ndarray]:
    """Patients, image names and labels; (items, labels (N, len(config.labels)) 0/1)."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    n = config.n_images
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(1 + min(int(rng.poisson(config.images_per_patient - 1.0)), 9))
    counts[-1] -= sum(counts) - n
    present = rng.random((n, len(SYNTH_LABELS))) < config.prevalence
    cols = [SYNTH_LABELS.index(name) for name in config.labels]
    labels = present[:, cols].astype(np.float32)
    items: list[_Item] = []
    for p, count in enumerate(counts):
        for k in range(count):
            i = len(items)
            findings = tuple(name for name, on in zip(config.labels, labels[i]) if on)
            items.append(_Item(f"p{p:05d}_{k:03d}.png", p, k, findings))
    return items, labels


def phantom_for(config: SynthConfig, patient: int, index: int,
                findings: Collection[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image ``index`` of ``patient`` exactly as :func:`generate_phantoms` draws it."""
    base = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1, patient)))
    anatomy = PatientAnatomy.sample(base)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2, patient, index)))
    return render_phantom(rng, config.size, findings, anatomy.follow_up(rng))


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array, mode="L").save(path, format="PNG", compress_level=6)


def _render_chunk(task: tuple[str, SynthConfig, list[_Item]]) -> int:
    out_dir, config, items = task
    images, masks_dir = Path(out_dir) / "images", Path(out_dir) / "masks"
    for item in items:
        image, masks = phantom_for(config, item.patient, item.index, item.findings)
        _save_png(image, images / item.name)
        stem = Path(item.name).stem
        for name in SYNTH_LABELS:
            path = masks_dir / f"{stem}_{name}.png"
            if name in masks:
                _save_png(masks[name].astype(np.uint8) * np.uint8(255), path)
            elif path.exists():
                path.unlink()          # a stale mask of an earlier run into the same folder
    return len(items)


def generate_phantoms(
    out_dir: str | Path,
    config: SynthConfig = SynthConfig(),
    workers: int | None = None,
    progress: bool = False,
) -> LabelTable:
    """Generate a phantom data set into ``out_dir``.

    Writes ``images/<name>.png`` (8-bit gray, names ``p<patient:05d>_<image:03d>.png``),
    ``masks/<stem>_<Label>.png`` (0/255, one per planted finding), ``labels.csv``
    (``Image``, one 0/1 column per label in config order, ``PatientId``) and
    ``synth.json`` (the config), these two last. The same config gives byte-identical
    files whatever ``workers`` is. Speed: about 9 ms per 128-px image per core.

    An existing ``out_dir`` is reused: the files named above are overwritten and masks
    of the written images that the new labels do not have are deleted. If ``out_dir``
    holds an earlier phantom set (a ``synth.json``), its images and masks that the new
    set does not have (``images/p*_*.png``, ``masks/p*_*_<Label>.png``) are deleted too,
    so the folder is always exactly one set; no other file is touched.

    Args:
        out_dir: output folder (created).
        config: what to generate.
        workers: processes (``spawn`` start method: call from under
            ``if __name__ == "__main__":`` in a script); None = all cores, 1 = in this
            process.
        progress: show a progress bar.

    Returns:
        The label table (absolute image paths, patient ids, view ``PA``, split ``""``),
        equal to what ``labels.csv`` says.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    items, labels = _plan(config)
    if (out_dir / "synth.json").is_file():
        _remove_stale(out_dir, items)

    workers = workers or os.cpu_count() or 1
    per = max(4, min(64, len(items) // (4 * workers) or 1))
    chunks = [items[i : i + per] for i in range(0, len(items), per)]
    workers = max(1, min(workers, len(chunks)))
    tasks = [(str(out_dir), config, chunk) for chunk in chunks]
    bar = tqdm(total=len(items), unit="img", desc="synth", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            for task in tasks:
                bar.update(_render_chunk(task))
        else:
            with _one_blas_thread_in_children():
                pool = mp.get_context("spawn").Pool(workers)
            with pool:
                for done in pool.imap_unordered(_render_chunk, tasks):
                    bar.update(done)
    finally:
        bar.close()

    frame = pd.DataFrame({"Image": [it.name for it in items]})
    for j, name in enumerate(config.labels):
        frame[name] = labels[:, j].astype(np.int64)
    frame["PatientId"] = [f"p{it.patient:05d}" for it in items]
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")
    record = {
        "generator": "cxr.synth",
        "format_version": FORMAT_VERSION,
        "config": {**asdict(config), "labels": list(config.labels)},
        "n_patients": len({it.patient for it in items}),
        "label_counts": {name: int(labels[:, j].sum()) for j, name in enumerate(config.labels)},
        "files": {"images": "images/<Image>", "masks": "masks/<stem>_<Label>.png (0/255)",
                  "labels": "labels.csv"},
    }
    (out_dir / "synth.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return table_from_dir(out_dir)


@contextmanager
def _one_blas_thread_in_children():
    """Start worker processes with one BLAS/OpenMP thread each (the small matrix products
    of the noise would otherwise spin threads that fight the other workers for the cores;
    measured: 3x slower at 256 px on 2 cores). The parent's environment is restored."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    try:
        for n in names:
            os.environ[n] = "1"
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def _remove_stale(out_dir: Path, items: list[_Item]) -> None:
    """Delete images and masks of an earlier phantom set that the new one lacks."""
    keep = {it.name[:-4] for it in items}
    for path in (out_dir / "images").glob("p*_*.png"):
        if path.stem not in keep:
            path.unlink()
    for path in (out_dir / "masks").glob("p*_*_*.png"):
        stem, _, label = path.stem.rpartition("_")
        if label in SYNTH_LABELS and stem not in keep:
            path.unlink()


def table_from_dir(out_dir: str | Path) -> LabelTable:
    """Read a folder written by :func:`generate_phantoms` back as a :class:`LabelTable`."""
    import pandas as pd

    out_dir = Path(out_dir)
    frame = pd.read_csv(out_dir / "labels.csv", dtype={"Image": str, "PatientId": str},
                        keep_default_na=False)
    names = [c for c in frame.columns if c not in ("Image", "PatientId")]
    images = (out_dir / "images").resolve()
    return LabelTable.from_columns(
        [str(images / name) for name in frame["Image"]],
        frame["PatientId"].tolist(),
        frame[names].to_numpy(dtype=np.float32),
        names,
        views=["PA"] * len(frame),
        splits=[""] * len(frame),
        source=f"synth:{out_dir}",
    )


__all__: Sequence[str] = (
    "SYNTH_LABELS",
    "PatientAnatomy",
    "PhantomRender",
    "SynthConfig",
    "generate_phantoms",
    "phantom_for",
    "render_phantom",
    "render_phantom_details",
    "sample_anatomy",
    "table_from_dir",
)
