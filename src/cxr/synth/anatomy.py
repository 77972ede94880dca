"""A patient's drawn-once anatomy and the geometry of the chest scene (heart, lungs, domes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from cxr.synth.config import F32, NORMAL_CTR


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
    tissue: float = 0.70  # soft-tissue density of the body
    lung_cx: float = 0.42  # lung centres at u = +-lung_cx
    lung_cy: float = -0.02
    lung_a_lat: float = 0.36  # lateral half-width (the chest wall at lung_cx + a_lat)
    lung_a_med: float = 0.30  # medial half-width
    lung_b_up: float = 0.72  # apex above the centre
    lung_p: float = 2.4  # superellipse exponent of the lung outline
    dome_right: float = 0.40  # top of the right hemidiaphragm (image left)
    dome_left: float = 0.44
    dome_curv: float = 0.24
    air: float = 0.45  # darkening of aerated lung
    ctr: float = 0.43  # normal cardiothoracic ratio
    heart_dx: float = 0.03
    heart_tilt: float = 0.45
    heart_ratio: float = 0.8
    spine_w: float = 0.055
    rib_spacing: float = 0.135
    rib_top: float = -0.86
    rib_curv: float = 1.3
    rib_density: float = 0.085
    marking: float = 0.075  # strength of the lung markings
    texture_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PatientAnatomy:
        """A random patient: body placement within a few %, organ shapes, texture."""
        r = rng.uniform
        dome_right = r(0.37, 0.45)
        tissue = r(0.64, 0.74)
        return cls(
            cx=r(-0.04, 0.04),
            cy=r(-0.03, 0.04),
            scale=r(0.93, 1.04),
            aspect=r(0.95, 1.05),
            tilt=r(-0.035, 0.035),
            tissue=tissue,
            lung_cx=r(0.40, 0.44),
            lung_cy=r(-0.04, 0.0),
            lung_a_lat=r(0.34, 0.38),
            lung_a_med=r(0.28, 0.31),
            lung_b_up=r(0.68, 0.76),
            lung_p=r(2.2, 2.7),
            dome_right=dome_right,
            dome_left=dome_right + r(0.0, 0.06),
            dome_curv=r(0.2, 0.28),
            air=tissue * r(0.6, 0.68),
            ctr=r(*NORMAL_CTR),
            heart_dx=r(0.0, 0.06),
            heart_tilt=r(0.35, 0.55),
            heart_ratio=r(0.74, 0.86),
            spine_w=r(0.05, 0.062),
            rib_spacing=r(0.125, 0.145),
            rib_top=r(-0.9, -0.82),
            rib_curv=r(1.1, 1.5),
            rib_density=r(0.07, 0.10),
            marking=r(0.06, 0.09),
            texture_seed=int(rng.integers(0, 2**62)),
        )

    def follow_up(self, rng: np.random.Generator) -> PatientAnatomy:
        """The same patient on another day: position, inspiration and heart size vary a little."""
        r = rng.uniform
        d = r(-0.015, 0.015)
        return replace(
            self,
            cx=self.cx + r(-0.015, 0.015),
            cy=self.cy + r(-0.015, 0.015),
            scale=self.scale * r(0.985, 1.015),
            tilt=self.tilt + r(-0.01, 0.01),
            dome_right=self.dome_right + d,
            dome_left=self.dome_left + d,
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
    g = rng.standard_normal((cells + 2, cells + 2)).astype(F32)
    off = rng.uniform(0, 1, 2)
    t = (np.arange(size, dtype=F32) + 0.5) * (cells / size)
    ty, tx = t + F32(off[0]), t + F32(off[1])
    return _interp_matrix(ty, cells + 2) @ g @ _interp_matrix(tx, cells + 2).T


def _interp_matrix(t: np.ndarray, n: int) -> np.ndarray:
    """(len(t), n) weights of smooth (smoothstep) interpolation between grid nodes."""
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    w = np.zeros((len(t), n), dtype=F32)
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
    a = np.where(du * side > 0, F32(an.lung_a_lat), F32(an.lung_a_med))
    b = np.where(dv < 0, F32(an.lung_b_up), F32(1.25))
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
    w = ctr * an.thorax_half_width  # horizontal half-extent
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
    discs: list[tuple[float, float, float]] = field(default_factory=list)  # occupied

    def collapsed_F(self, side, u, v):
        assert self.pneumo is not None, "collapsed_F is only drawn for a pneumothorax"
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
        return top - h * (med + (1 - med) * t**3)

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

    def place(
        self,
        rng: np.random.Generator,
        radius: float,
        margin: float = 0.02,
        zone: tuple[float, float] = (-1.0, 1.0),
    ) -> tuple[float, float]:
        """A centre whose disc of ``radius`` (+margin) lies in aerated lung, free of others."""
        an = self.an
        ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        best: tuple[float, float] | None = None
        best_score = -1
        for _ in range(6):
            k = 64
            side = np.where(rng.random(k) < 0.5, -1.0, 1.0)
            cu = side * (an.lung_cx + rng.uniform(-an.lung_a_med, an.lung_a_lat, k) * 0.95)
            cv = rng.uniform(max(zone[0], an.lung_cy - an.lung_b_up), min(zone[1], 0.62), k)
            rr = radius + margin
            pu = np.concatenate([cu[:, None], cu[:, None] + rr * np.cos(ang)], axis=1)
            pv = np.concatenate([cv[:, None], cv[:, None] + rr * np.sin(ang)], axis=1)
            score = self.aerated(pu, pv).sum(axis=1)
            for du_, dv_, dr in self.discs:
                score = np.where(np.hypot(cu - du_, cv - dv_) < dr + radius + margin, -1, score)
            i = int(np.argmax(score))
            if score[i] > best_score:
                best, best_score = (float(cu[i]), float(cv[i])), int(score[i])
            if best_score == pu.shape[1]:
                break
        if best is None:
            raise RuntimeError("no free place in aerated lung for a lesion")
        return best
